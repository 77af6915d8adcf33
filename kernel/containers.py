"""Kernel containers: the engine container a notebook kernel runs in, and its run dir.

A kernel container gets one host directory (its *run dir*) bind-mounted at /run/cellbox:
the kernel's ZMQ ipc sockets, the container view of the connection file and the control
socket live there, and the container side of cellbox.kernel (kernel/inside/, nothing of
the host side) is mounted read-only at /run/cellbox/lib/cellbox/kernel/inside. The run
dir name is a random token (a label on the container), not the container id, so a
container cannot guess another's socket paths.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from cellbox.runtime.engine import (
    CREATED,
    DEFAULT_IMAGE,
    DEFAULT_OPEN_FILES_SHARE,
    PAUSED,
    RUNNING,
    Container,
    Engine,
    RunOptions,
    check_open_files_share,
    open_files_per_process,
    proc_start_time,
)
from cellbox.runtime.errors import CellboxError, InvalidArgument

LABEL_RUN = "cellbox.kernel.run"  # the run dir token
LABEL_SESSION = "cellbox.kernel.session"  # JPY_SESSION_NAME (notebook path) when known
LABEL_FOLDER = "cellbox.kernel.folder"  # the notebook's folder's mode: rw or ro (absent: none)
# Where the notebook's folder appears inside, and the kernel's working directory: relative
# paths in cells work as with a plain kernel. Like a Docker volume, it is not part of the
# container's layer (snapshots and commit leave it out unless --with-files).
NOTEBOOK_MOUNT = "/notebook"
FOLDER_MODES = ("rw", "ro", "none")
IN_CONTAINER = "/run/cellbox"
CONTROL_SOCKET = "control.sock"
CONNECTION_FILE = "kernel.json"
INSIDE_DIR = Path(__file__).resolve().parent / "inside"  # the only part a container sees
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes; ZMQ appends "-N"
IDLE_COMMAND = ["sleep", "2147483647"]
# A notebook's processes, and open files per process: together within an eighth of the
# host's file table (runtime/filetable.py says why both are bounded).
DEFAULT_PIDS = 512
DEFAULT_DISK = "10g"  # the notebook's writable layer, a filesystem of its own (runtime/storage.py)
# What a notebook's snapshots may keep (the server's c.Cellbox.max_snapshots/snapshot_quota
# replace these; a kernel started from the kernelspec alone keeps them).
DEFAULT_MAX_SNAPSHOTS = 20
DEFAULT_SNAPSHOT_QUOTA = 5 << 30


def run_base(eng: Engine) -> Path:
    """Where run dirs live: $CELLBOX_RUN_DIR, else <engine root>/k (short on purpose)."""
    return Path(os.environ.get("CELLBOX_RUN_DIR") or (eng.root / "k"))


def kernel_run_options(
    *,
    image: str | None = None,
    memory: str | int | None = None,
    cpus: float | None = None,
    network: str = "none",
    pids_limit: int | None = None,
    name: str | None = None,
    labels: dict[str, str] | None = None,
    env: list[str] | None = None,
    user: str | None = None,
    userns: str = "auto",
    nofile: int | None = None,
    open_files_share: float = DEFAULT_OPEN_FILES_SHARE,
    disk: str | None = DEFAULT_DISK,
    folder: str | None = None,
    folder_mode: str = "rw",
    volumes: list[str] | None = None,
) -> RunOptions:
    """RunOptions for a kernel container (the run-dir volumes are added by create).

    userns "auto" (the default): the notebook's root is an unprivileged host id of its own.
    pids_limit (default DEFAULT_PIDS) times nofile may not pass open_files_share of the
    host's file table (InvalidArgument). disk: the size of its writable layer (None or
    "" for none: it then writes to the host's disk without limit).
    folder: the notebook's host folder, mounted at NOTEBOOK_MOUNT (folder_mode rw or ro;
    "none" or no folder: nothing), the kernel's working directory; idmapped, so what the
    container's root writes there is owned by the user the server runs as. volumes:
    more -v specs (the server's c.Cellbox.volumes, checked by the caller).
    """
    pids_limit = pids_limit or DEFAULT_PIDS
    labels = dict(labels or {})
    vols = list(volumes or [])
    workdir = None
    if folder_mode not in FOLDER_MODES:
        raise InvalidArgument(f"the notebook's folder mode must be one of {', '.join(FOLDER_MODES)}: {folder_mode!r}")
    if folder and folder_mode != "none":
        if ":" in folder:
            raise InvalidArgument(f"cannot mount the notebook's folder {folder}: its path has a ':'")
        vols.insert(0, f"{folder}:{NOTEBOOK_MOUNT}:{folder_mode},nosuid,nodev,idmap")
        labels[LABEL_FOLDER] = folder_mode
        workdir = NOTEBOOK_MOUNT
    nofile = nofile or open_files_per_process(pids_limit, open_files_share)
    check_open_files_share(pids_limit, nofile, open_files_share, what="a notebook's container")
    return RunOptions(
        image=image or DEFAULT_IMAGE,
        command=list(IDLE_COMMAND),
        name=name,
        memory=memory,
        cpus=cpus,
        network=network or "none",
        pids_limit=pids_limit,
        labels=labels,
        env=list(env or []),
        volumes=vols,
        workdir=workdir,
        user=user,
        userns=userns,
        ulimits=[f"nofile={nofile}:{nofile}"],
        storage_opts=[f"size={disk}"] if disk else [],
    )


def _make_run_dir(eng: Engine) -> tuple[str, Path]:
    base = run_base(eng)
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o700)  # run dirs belong to their containers: no host user may reach one
    token = secrets.token_hex(12)
    d = base / token
    longest = d / f"{CONTROL_SOCKET}-xx"
    if len(str(longest)) > MAX_SOCKET_PATH:
        raise InvalidArgument(
            f"kernel socket path {d} is too long for a unix socket: set CELLBOX_RUN_DIR to a short directory"
        )
    d.mkdir(mode=0o700)  # given to the container's root (its host id) once that is known
    lib = d / "lib" / "cellbox"
    (lib / "kernel" / "inside").mkdir(parents=True)  # the mount point of INSIDE_DIR
    (lib / "__init__.py").write_text('"""cellbox, container side: only cellbox.kernel.inside is here."""\n')
    shutil.copyfile(INSIDE_DIR / "package_init.py", lib / "kernel" / "__init__.py")
    return token, d


def leave_out_unenforced(eng: Engine, opts: RunOptions) -> dict[str, str]:
    """Drop from opts the limits this engine cannot give (rootless: no delegated cgroup,
    no disk of its own), so the kernel still starts; what was dropped, with why, is what
    `container_info` reports as "unenforced" (never silent)."""
    gaps = eng.unenforced_limits()
    if "memory" in gaps:
        opts.memory = opts.memory_swap = None
    if "cpus" in gaps:
        opts.cpus, opts.cpu_shares = None, None
    if "pids" in gaps:
        opts.pids_limit = None
    if "disk" in gaps:
        opts.storage_opts = [o for o in opts.storage_opts if not o.startswith("size=")]
    return gaps


def create_kernel_container(eng: Engine, opts: RunOptions, start: bool = True) -> Container:
    """Create (and start) a container a cellbox kernel can run in.

    Adds the run dir and the read-only container side of the kernel (kernel/inside/) to
    `opts.volumes`, the run-dir token to its labels. The extension uses this for the
    containers it manages.
    """
    if opts.image is None and opts.rootfs is None:
        eng.ensure_default_image()
    elif opts.image == kernel_run_options().image:
        eng.ensure_default_image()
    leave_out_unenforced(eng, opts)
    token, d = _make_run_dir(eng)
    opts.labels = {**opts.labels, LABEL_RUN: token}
    # nosuid,nodev: what the container plants in its run dir is no key to the host's root.
    opts.volumes = [
        *opts.volumes,
        f"{d}:{IN_CONTAINER}:rw,nosuid,nodev",
        f"{INSIDE_DIR}:{IN_CONTAINER}/lib/cellbox/kernel/inside:ro,nosuid,nodev",
    ]
    if not opts.command:
        opts.command = list(IDLE_COMMAND)
    ctr = None
    try:
        ctr = eng.create(opts)
        eng.snapshot_limits(ctr.id, DEFAULT_MAX_SNAPSHOTS, DEFAULT_SNAPSHOT_QUOTA)
        base = ctr.host_base()
        owner = 0 if base is None else base
        os.chown(d, owner, owner)  # the kernel makes its sockets here as container root
        if start:
            eng.start(ctr.id)
        return ctr
    except BaseException:
        if ctr is not None:
            eng.remove(ctr.id, force=True)
        shutil.rmtree(d, ignore_errors=True)
        raise


def run_dir(eng: Engine, ctr: Container) -> Path:
    """The host run dir of a kernel container (CellboxError if it is not one)."""
    token = ((ctr.options or {}).get("labels") or {}).get(LABEL_RUN)
    if not token or not all(c in "0123456789abcdef" for c in token):
        raise CellboxError(
            f"container {ctr.short_id} was not created for a cellbox kernel (no {LABEL_RUN} label): "
            "create it with cellbox.kernel.containers.create_kernel_container"
        )
    return run_base(eng) / token


PORT_KEYS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


def host_ipc_dir(eng: Engine, run: Path) -> Path:
    """Where the host's ZMQ clients connect for the kernel of run dir `run`: beside it in
    the root-only run base, never mounted in a container (see ipcpins)."""
    return run.parent / f"{run.name}.h"


def remove_stale_sockets(run: Path) -> None:
    """Unlink the kernel sockets a previous kernel left in run dir `run` (the dir is the
    container's to write: names are unlinked through its fd, never followed)."""
    try:
        fd = os.open(run, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        for name in os.listdir(fd):
            if name.startswith("kernel-") and name[len("kernel-") :].isdigit():
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)


def ipc_pins(eng: Engine, ctr: Container) -> Any:
    """The host's pinned ends of the kernel sockets in ctr's run dir."""
    from .ipcpins import IpcPins

    run = run_dir(eng, ctr)
    return IpcPins(run, host_ipc_dir(eng, run), ctr.host_ids())


def ensure_running(eng: Engine, ctr: Container) -> None:
    """Start a stopped kernel container again (its files are kept)."""
    st = ctr.state().status
    if st == RUNNING:
        return
    if st == PAUSED:
        eng.unpause(ctr.id)
    elif st == CREATED:
        eng.start(ctr.id)
    else:
        eng.restart(ctr.id)


def kill_strays(eng: Engine, ctr: Container, keep: tuple[int, ...] = ()) -> int:
    """SIGKILL every process in the container but its init, its main (idle) process and `keep`.

    What a dead kernel left behind (its children), so a restart leaves no orphans. The
    main process is told by pid, never by its command line (a cell can start its own
    `sleep 2147483647`): it is the init's child started first; anything else the init is
    parent of was reparented to it later (an orphan of a kernel or an exec). `keep`: host
    processes charged to the container's memory cgroup (the kernel's relay), listed too.
    """
    import signal

    init = ctr.state().pid
    rows = eng.top(ctr.id)
    started = {r["PID"]: proc_start_time(r["PID"]) for r in rows if r["PPID"] == init}
    main = min((s, pid) for pid, s in started.items() if s is not None)[1] if any(started.values()) else None
    n = 0
    for row in rows:
        pid = row["PID"]
        if pid in (init, main) or pid in keep:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            n += 1
        except ProcessLookupError:
            pass
    return n


def remove_kernel_container(eng: Engine, ref: str) -> None:
    """Remove a kernel container and its run dir."""
    ctr = eng.get(ref)
    d = None
    try:
        d = run_dir(eng, ctr)
    except CellboxError:
        pass
    eng.remove(ctr.id, force=True)
    if d is not None:
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(host_ipc_dir(eng, d), ignore_errors=True)


def container_info(eng: Engine, ctr: Container) -> dict[str, Any]:
    """What `%cellbox status` shows: names, image, limits and usage."""
    o = ctr.options or {}
    return {
        "id": ctr.id,
        "name": ctr.name,
        "image": ctr.image,
        "status": ctr.state().status,
        "network": o.get("network"),
        "limits": {"memory": o.get("memory"), "cpus": o.get("cpus"), "pids": o.get("pids_limit")},
        "unenforced": eng.unenforced_limits(),
        "stats": eng.stats(ctr.id),
        "mounts": mounts_of(ctr),
    }


def mounts_of(ctr: Container) -> list[dict[str, Any]]:
    """What is mounted in the container from the host (the notebook's folder, volumes,
    tmpfs), and how: shown by `%cellbox status` and the panel. The kernel's own run dir
    and /etc files are left out."""
    out = []
    for m in ctr.config().get("mounts") or []:
        dest = m.get("destination") or ""
        if dest.startswith(IN_CONTAINER) or dest in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf"):
            continue
        opts = m.get("options") or []
        if m.get("type") == "bind" or (m.get("type") == "tmpfs" and dest not in ("/dev", "/dev/shm")):
            what = "folder" if dest == NOTEBOOK_MOUNT else m.get("type")
            out.append({"destination": dest, "source": m.get("source"), "kind": what, "mode": "ro" if "ro" in opts else "rw"})
    return out


def write_connection_file(run_dir: Path, info: dict[str, Any]) -> None:
    """The container's view of a kernel's connection file, in its run dir.

    The run dir is writable from inside the container: the temp file is new under a
    random name, never a link followed (O_EXCL|O_NOFOLLOW), and the rename replaces a
    link at the final name instead of writing through it.
    """
    from cellbox.runtime.engine import atomicfile

    inside = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in info.items()}
    inside.update(ip=f"{IN_CONTAINER}/kernel", transport="ipc")
    owner = os.stat(run_dir)  # container root, in a user namespace of its own
    with atomicfile.replacing(run_dir / CONNECTION_FILE, 0o600, text=True) as f:
        os.fchown(f.fileno(), owner.st_uid, owner.st_gid)
        json.dump(inside, f)
