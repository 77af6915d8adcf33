"""The engine: the one public API over containers that the CLI, the kernel and the
server extension all use. Docker's habits: names, ids, run/exec/stop/rm, logs.

Containers live in $CELLBOX_ROOT/containers/<id>/: container.json (what the user
asked for), config.json (the OCI config given to the runtime), state.json (the
runtime's record), upper/ and work/ (the overlay's writable part), log, etc files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal as signal_mod
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import atomicfile as atomicfile  # for kernel/ and extension/: they enter by this door
from . import launcher, runconfig, spec, state, storage, userns
from .engine_images import ImageOps
from .errors import CellboxError, Conflict, InvalidArgument, NotFound
from .filetable import DEFAULT_SHARE as DEFAULT_OPEN_FILES_SHARE  # noqa: F401 - for kernel/, extension/
from .filetable import check_share as check_open_files_share  # noqa: F401
from .filetable import per_process as open_files_per_process  # noqa: F401
from .images.default_image import DEFAULT_IMAGE
from .images.reference import Reference, parse_reference
from .isolation import Isolation
from .isolation import probe as probe_isolation
from .limits import Limits
from .names import random_name, validate_name
from .protocol import parse_signal
from .runconfig import RunOptions, merge_env, parse_env, parse_user
from .state import CREATED, PAUSED, RUNNING, STOPPED, proc_start_time

if TYPE_CHECKING:
    from .cgroups.delegate import LimitsStatus
    from .images.snapshots import SnapshotInfo, Snapshots
    from .images.store import ImageStore
    from .network import NetworkManager
    from .volumes import VolumeStore

DEFAULT_ROOT = "/var/lib/cellbox"


def rootless() -> bool:
    """Whether cellbox runs as an ordinary user (issue 13): a store of the user's own, a
    user namespace mapped through newuidmap, and no cgroup limits without delegation."""
    return os.geteuid() != 0


def default_root() -> Path:
    """The store: $CELLBOX_ROOT; else /var/lib/cellbox for root; else the user's
    $XDG_DATA_HOME/cellbox (default ~/.local/share/cellbox), as podman's rootless store."""
    if os.environ.get("CELLBOX_ROOT"):
        return Path(os.environ["CELLBOX_ROOT"])
    if not rootless():
        return Path(DEFAULT_ROOT)
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(data) / "cellbox"


def default_run_dir() -> Path:
    """Where a user's sockets and run dirs go: $XDG_RUNTIME_DIR/cellbox, else a private
    0700 dir under /tmp (checked to be the user's own). Root: /run/cellbox."""
    if not rootless():
        return Path("/run/cellbox")
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "cellbox"
    return Path(f"/tmp/cellbox-run-{os.geteuid()}")


def _own_dir(path: Path, mode: int) -> None:
    """Make path (parents as needed) or accept it only if it is the caller's own and no
    one else can enter it: another user's store or run dir is a plain error, nothing made."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        pst = os.stat(parent)
        if rootless() and pst.st_uid not in (os.geteuid(), 0):
            raise CellboxError(
                f"{parent} belongs to uid {pst.st_uid}, not to you: set CELLBOX_ROOT to a dir of your own"
            ) from None
        path.mkdir(parents=True, mode=mode, exist_ok=True)
        os.chmod(path, mode)
        return
    import stat as stat_mod

    if not stat_mod.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise CellboxError(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}): "
            "set CELLBOX_ROOT to a dir of your own"
        )


@dataclass
class Container:
    """The engine's record of one container."""

    id: str
    name: str
    dir: Path
    created: str
    options: dict[str, Any]
    image: str = ""
    image_id: str = ""
    network: dict[str, Any] = field(default_factory=dict)

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def state(self) -> state.State:
        return launcher.state_of(self.dir)

    def config(self) -> dict[str, Any]:
        with open(self.dir / "config.json") as f:
            return json.load(f)

    @property
    def upper(self) -> Path:
        """The overlay's upper dir: in the container's dir, or on its own filesystem."""
        upper = (self.config().get("annotations") or {}).get(spec.ANN_UPPER)
        if upper and storage.has_own_filesystem(self.dir) and not os.path.ismount(storage.writable_dir(self.dir)):
            # an empty mount point would read as "no changes": never commit that
            raise CellboxError(f"container {self.short_id}: its filesystem ({storage.IMAGE}) is not mounted")
        return Path(upper) if upper else self.dir / "upper"

    def host_ids(self) -> tuple[int, int] | None:
        """The host ids [first, end) this container's ids map to; None: the host's own."""
        base = self.host_base()
        return None if base is None else (base, base + userns.SIZE)

    def host_base(self) -> int | None:
        """The host uid (and gid) that this container's root is; None: the host's own ids."""
        try:
            return userns.host_base(self.config())
        except OSError:
            return None

    @property
    def log_path(self) -> Path:
        return self.dir / "container.log"


def _status_or_gone(ctr: Container) -> str:
    """The container's status, or "" when another process removed it meanwhile (a
    listing races every `rm`)."""
    try:
        return ctr.state().status
    except NotFound:
        return ""


def _stopped(pid: int) -> bool:
    """Whether process pid is stopped (state T) or gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t", b"X", b"Z")
    except (OSError, IndexError):
        return True


class NoCgroup:
    """The cgroup of a container that has none (rootless, nothing delegated): its pid
    namespace stands in; killing its init ends every process in it, and SIGSTOP/SIGCONT
    of each of its processes stand in for the freezer (pause, a consistent copy)."""

    stops_by_signal = True

    def __init__(self, ctr: Container) -> None:
        self.ctr = ctr

    def _init(self) -> int:
        st = self.ctr.state()
        return st.pid if st.status != state.STOPPED and st.pid else 0

    def exists(self) -> bool:
        return False

    def procs(self) -> list[int]:
        """The init and every process below it (an exec's process hangs below its helper)."""
        pid = self._init()
        return userns.descendants(pid) if pid else []

    def kill_all(self, sig: int = signal_mod.SIGKILL, timeout: float = 10) -> None:
        if pid := self._init():
            try:
                os.kill(pid, signal_mod.SIGKILL)  # PID 1 gone: the kernel kills the rest
            except ProcessLookupError:
                pass

    def frozen(self) -> bool:
        procs = self.procs()
        return bool(procs) and all(_stopped(p) for p in procs)

    def freeze(self, timeout: float = 10) -> None:
        """SIGSTOP every process of the container, again until no new one appears (a fork
        racing the stop), as a freezer would; the user owns the container's namespace, so
        its processes of any id are theirs to signal."""
        deadline = time.monotonic() + timeout
        seen: set[int] = set()
        while True:
            procs = set(self.procs())
            for pid in procs - seen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal_mod.SIGSTOP)
            if procs <= seen and all(_stopped(p) for p in procs):
                return
            seen |= procs
            if time.monotonic() > deadline:
                self.thaw()
                raise CellboxError(f"container {self.ctr.short_id} could not be stopped for a copy in {timeout:.0f}s")
            time.sleep(0.001)

    def thaw(self) -> None:
        for pid in self.procs():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal_mod.SIGCONT)

    def stats(self) -> dict[str, Any]:
        return {"memory": {}, "cpu": {}, "pids": {"current": len(self.procs())}}

    def destroy(self) -> None:
        pass


DISK_NEEDS_ROOT = "a disk limit needs root (the container's own filesystem is a loop mount)"


class Engine(ImageOps):
    """Containers (and, through `images`, the image store) under one root."""

    def __init__(
        self, root: str | Path | None = None, cgroup_parent: str | None = None, zygote: bool | None = None
    ) -> None:
        self.root = Path(root) if root else default_root()
        self.containers_dir = self.root / "containers"
        if rootless():
            _own_dir(self.root, 0o700)  # the user's store is theirs alone
        self.containers_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700 if rootless() else 0o711)
        parent = cgroup_parent or os.environ.get("CELLBOX_CGROUP_PARENT")
        if not parent and os.geteuid() != 0:
            from .cgroups import default_parent  # the group root delegated to this user, if any

            parent = default_parent()
        self.cgroup_parent = parent or "cellbox"
        self._images: ImageStore | None = None
        self._network: NetworkManager | None = None
        self._monitors: dict[str, Any] = {}  # id -> monitor Popen, for a fast wait()
        # A long-lived caller (server, kernel) starts containers through a pre-forked zygote.
        self.use_zygote = zygote if zygote is not None else os.environ.get("CELLBOX_ZYGOTE") == "1"
        # A single-threaded caller (the `cellbox` command) may fork the monitor itself.
        self.fork_monitor = False

    def limits_status(self) -> LimitsStatus:
        """Whether this engine's containers get cgroup limits (.available), and one line why
        not (.reason): an ordinary user gets them only in a cgroup root delegated to them."""
        from .cgroups.delegate import limits_status

        return limits_status(self.cgroup_parent)

    @property
    def run_dir(self) -> Path:
        """The dir for this user's sockets and run dirs (default_run_dir), made 0700 on
        first use; refused if another user holds it. Without XDG_RUNTIME_DIR (no login
        session) an ordinary user's goes under /tmp, said in one warning line."""
        d = default_run_dir()
        if rootless() and not os.environ.get("XDG_RUNTIME_DIR"):
            import logging

            logging.getLogger(__name__).warning(
                "cellbox: XDG_RUNTIME_DIR is not set (no login session): sockets go to %s", d
            )
        _own_dir(d, 0o700)
        return d

    # ------------------------------------------------------------------ helpers

    @property
    def images(self) -> ImageStore:
        """The image store (created on first use): list, resolve, config, history, tag,
        rmi return `Image` records; pull and push are the engine's own methods."""
        if self._images is None:
            from .images.store import ImageStore

            self._images = ImageStore(self.root / "images")
        return self._images

    @property
    def network(self) -> NetworkManager:
        """The bridge network; on first use it removes what a crash left (veths, nft
        rules, address allocations of containers that no longer run)."""
        if self._network is None:
            from .network import NetworkManager

            mgr = NetworkManager(self.root / "network")
            try:
                mgr.cleanup_stale(self._alive)
            except Exception as e:  # noqa: BLE001 - a failed clean-up must not block new containers
                import logging

                logging.getLogger(__name__).warning("cellbox: cleaning up stale networks: %s", e)
            self._network = mgr
        return self._network

    def _alive(self, cid: str) -> bool:
        """Whether the container exists and is not stopped, asked now (not from a list)."""
        d = self.containers_dir / cid
        if not (d / "state.json").exists():
            return False
        try:
            return launcher.state_of(d).status != state.STOPPED
        except (CellboxError, OSError):
            return False

    def _creator(self) -> Any:
        if self.use_zygote:
            from .zygote import Zygote

            return Zygote.shared().create
        if self.fork_monitor:
            return lambda *args, **kw: launcher.create(*args, fork=True, **kw)
        return launcher.create

    def _lock(self, shared: bool = False) -> Any:
        return state.locked(self.containers_dir / ".lock", shared=shared)

    def _load(self, cid: str) -> Container:
        d = self.containers_dir / cid
        with open(d / "container.json") as f:
            raw = json.load(f)
        raw["dir"] = d
        return Container(**{k: v for k, v in raw.items() if k in Container.__dataclass_fields__})

    def _save(self, ctr: Container, durable: bool = True) -> None:
        raw = dataclasses.asdict(ctr)
        raw.pop("dir")
        state.write_json(ctr.dir / "container.json", raw, durable=durable)

    def _all(self) -> list[Container]:
        out = []
        for d in self.containers_dir.iterdir():
            if d.is_dir() and (d / "container.json").exists():
                try:
                    out.append(self._load(d.name))
                except (OSError, ValueError, TypeError):
                    continue
        return out

    def get(self, ref: str) -> Container:
        """A container by full id, name, or unique id prefix; its files mounted if they
        live on a filesystem of their own (--storage-opt size=) that is not (a reboot)."""
        ctr = self._find(ref)
        if storage.has_own_filesystem(ctr.dir):
            try:
                storage.mount(ctr.dir)
            except CellboxError as e:  # rm must still work; reading the upper dir will say so
                import logging

                logging.getLogger(__name__).warning("cellbox: container %s: %s", ctr.short_id, e)
        return ctr

    def _find(self, ref: str) -> Container:
        if not ref:
            raise InvalidArgument("a container name or id is required")
        if (self.containers_dir / ref / "container.json").exists():
            return self._load(ref)
        all_ = self._all()
        for c in all_:
            if c.name == ref:
                return c
        matches = [c for c in all_ if c.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"ambiguous container id prefix: {ref}")
        raise NotFound(f"no such container: {ref}")

    # ------------------------------------------------------------------ create/run

    def _image_config(self, opts: RunOptions) -> tuple[dict[str, Any], list[str], str, str]:
        """(image config, lowerdirs top first, image ref, image id)."""
        if opts.rootfs:
            rootfs = os.path.realpath(opts.rootfs)
            if not os.path.isdir(rootfs):
                raise InvalidArgument(f"rootfs {opts.rootfs} is not a directory")
            return {}, [rootfs], "", ""
        if not opts.image:
            raise InvalidArgument("an image or --rootfs is required")
        img = self.images.resolve(opts.image)
        lowers = [str(p) for p in self.images.layer_dirs(img)]
        lowers.reverse()
        if not lowers:
            raise InvalidArgument(f"image {opts.image} has no layers")
        cfg = (self.images.config(img) or {}).get("config") or {}
        return cfg, lowers, opts.image, img.id

    def build_config(
        self, ctr_dir: Path, cid: str, opts: RunOptions, writable: Path | None = None
    ) -> tuple[dict[str, Any], str, str]:
        """(OCI config, image ref, image id) for these options."""
        from .network import parse_network

        img_cfg, lowers, image_ref, image_id = self._image_config(opts)
        joined = None
        net = parse_network(opts.network)
        if net.mode == "container":
            other = self.get(net.container or "")
            ost = other.state()
            if ost.status != state.RUNNING:
                raise Conflict(f"cannot join network of container {net.container}: it is not running")
            joined = f"/proc/{ost.pid}/ns/net"
        base = None
        if userns.parse_mode(opts.userns) == "auto" and not rootless():
            base = userns.allocate(b for c in self._all() if (b := c.host_base()) is not None)
        cfg = runconfig.build_config(
            ctr_dir, cid, opts, image_config=img_cfg, lowers=lowers, cgroup_parent=self.cgroup_parent,
            joined_netns=joined, userns_base=base, writable=writable, volume_source=self._volume_source,
        )  # fmt: skip
        if rootless():
            self._rootless_config(cfg, runconfig.limits(opts), bridged=net.mode == "bridge" or bool(opts.publish))
        return cfg, image_ref, image_id

    @property
    def volumes(self) -> VolumeStore:
        """The named volumes under this root (runtime/volumes.py)."""
        from .volumes import VolumeStore

        return VolumeStore(self.root)

    def _volume_source(self, name: str) -> str:
        """-v NAME:/path: the volume's data dir, made on first use ("": a new anonymous one)."""
        if not name:
            name = self.volumes.create()["Name"]
        return str(self.volumes.ensure(name))

    def volume_users(self, name: str) -> list[str]:
        """Ids of the containers (running or not) that name volume `name`."""
        from .volumes import volumes_of

        return [c.id for c in self._all() if name in volumes_of(c.options or {})]

    def set_bind_source(self, ref: str, destination: str, source: str) -> None:
        """Point a stopped container's bind at `destination` at another host dir (a
        notebook that moved gets its new folder); its next start mounts that."""
        ctr = self.get(ref)
        if ctr.state().status != state.STOPPED:
            raise Conflict(f"container {ctr.short_id} must be stopped to change its mounts")
        if not os.path.isabs(source) or not os.path.isdir(source):
            raise InvalidArgument(f"volume source {source} is not a directory")
        source = os.path.realpath(source)
        cfg = ctr.config()
        binds = [m for m in cfg.get("mounts") or [] if m.get("destination") == destination and m.get("type") == "bind"]
        if not binds:
            raise NotFound(f"container {ctr.short_id} has no bind at {destination}")
        binds[0]["source"] = source
        vols = []
        for v in ctr.options.get("volumes") or []:
            rest = v.partition(":")[2]  # -v SRC:DST[:OPTS], as stored
            vols.append(f"{source}:{rest}" if rest.split(":", 1)[0] == destination else v)
        ctr.options["volumes"] = vols
        state.write_json(ctr.dir / "config.json", cfg)
        self._save(ctr)

    # ------------------------------------------------------------------ a bound folder
    # A bind (the notebook's folder) is a volume, not part of the container's layer:
    # snapshots, restore and commit cover it only when asked (--with-files).

    def bind_source(self, ref: str, destination: str) -> Path:
        """The host dir bound at `destination` in the container (InvalidArgument if none)."""
        ctr = self.get(ref)
        for m in ctr.config().get("mounts") or []:
            if m.get("destination") == destination and m.get("type") == "bind":
                return Path(m["source"])
        raise InvalidArgument(f"container {ctr.short_id} has no folder mounted at {destination}")

    def files_snapshots(self, ref: str) -> Snapshots:
        """Snapshots of a bound folder, each named (message) after the layer snapshot it goes with."""
        from .images.snapshots import Snapshots

        return Snapshots(self.get(ref).dir / "files-snapshots")

    def snapshot_create_with_files(self, ref: str, destination: str, message: str = "") -> SnapshotInfo:
        """A snapshot of the container's layer and of the folder bound at `destination`,
        incremental as the layer's (unchanged files cost nothing), within the same limits.
        The folder is read beneath its own fd: a symlink in it is copied, never followed."""
        ctr = self.get(ref)
        src = self.bind_source(ctr.id, destination)
        files = self.files_snapshots(ctr.id)
        files.set_limits(*self.snapshots(ctr.id).limits())
        with self._frozen(ctr, True, "snapshot"):
            info = userns.call(lambda: self.snapshots(ctr.id).create(ctr.upper, message))
            try:
                userns.call(lambda: files.create(src, info.id))
            except BaseException:
                self.snapshots(ctr.id).remove(info.id)  # both or neither
                raise
        return info

    def snapshot_remove_files(self, ref: str, snap: str) -> None:
        """Drop the folder kept with layer snapshot `snap` (--with-files), if any: removing a
        snapshot frees both."""
        ctr = self.get(ref)
        if not (ctr.dir / "files-snapshots").is_dir():
            return
        files = self.files_snapshots(ctr.id)
        for s in files.list():
            if s.message == snap:
                files.remove(s.id)

    def snapshot_restore_with_files(self, ref: str, snap: str, destination: str) -> SnapshotInfo:
        """Back to a snapshot taken --with-files: the layer and the folder bound at
        `destination` (made exactly as it was: later files go); the container restarts."""
        ctr = self.get(ref)
        info = self.snapshots(ctr.id).get(snap)
        files = self.files_snapshots(ctr.id)
        fsnap = next((s for s in files.list() if s.message == info.id), None)
        if fsnap is None:
            raise NotFound(f"snapshot {info.id[:12]} was taken without --with-files: it holds no folder")
        src = self.bind_source(ctr.id, destination)
        was_running = ctr.state().status in (state.RUNNING, state.PAUSED)
        self.stop(ctr.id, timeout=2)
        userns.call(lambda: files.restore(fsnap.id, src))
        self.snapshot_restore(ctr.id, info.id)  # stopped: the layer only, no restart
        if was_running:
            self._recreate(ctr)
            self._start(ctr)
        return info

    def commit_with_files(
        self, ref: str, repo_tag: str | None, destination: str, *, message: str = "",
        changes: list[str] | tuple[str, ...] = (), progress: Any = None,
    ) -> Any:
        """commit, plus the folder bound at `destination` as one more layer at that path,
        which becomes the image's working directory: `cellbox run IMAGE` then finds the
        notebook and its files where the kernel had them, from the image alone."""
        from .engine_images import owned_tmpdir

        ctr = self.get(ref)
        src = self.bind_source(ctr.id, destination)
        img = self.commit(ctr.id, None, message=message, changes=changes, progress=progress)
        with owned_tmpdir(ctr.dir) as tmp:

            def copy() -> Any:
                from .images.snapshots import Snapshots

                snaps = Snapshots(Path(tmp) / "s")
                snap = snaps.create(src, "commit")  # read beneath the folder's fd, links copied as links
                tree = Path(tmp) / "tree"
                parent = tree / os.path.dirname(destination.strip("/"))
                parent.mkdir(mode=0o755, parents=True)
                snaps.materialize(snap.id, tree / destination.strip("/"))
                return self.images.commit(
                    tree, img, ref=repo_tag, message=message, changes=[*changes, f"WORKDIR {destination}"],
                    created_by=f"cellbox commit --with-files {destination}", progress=progress,
                )  # fmt: skip

            return userns.call(copy)  # rootless: the user's files are root's in the image

    def volume_remove(self, name: str) -> None:
        """`volume rm`: refused while a container names it (Docker's)."""
        self.volumes.remove(name, self.volume_users(name))

    def _rootless_config(self, cfg: dict[str, Any], lim: Limits, bridged: bool = False) -> None:
        """An ordinary user's container: a user namespace whose root is the user (the
        user's subordinate ranges map the rest), the overlay mounted inside it, and no
        cgroup unless one is delegated to the user (then no limit can be asked for)."""
        linux = cfg["linux"]
        maps, ranges = userns.rootless_mappings(os.getuid(), os.getgid())
        linux.update(maps)
        if not ranges:  # only root is mapped: devpts cannot give its tty group (gid 5)
            for m in cfg.get("mounts") or []:
                if m.get("type") == "devpts":
                    m["options"] = [o for o in m.get("options") or [] if not o.startswith("gid=")]
        if not any(n["type"] == "user" for n in linux["namespaces"]):
            linux["namespaces"].append({"type": "user"})
        if any(n["type"] == "network" and n.get("path") for n in linux["namespaces"]):
            raise InvalidArgument("--network container: is not supported rootless yet")
        if bridged:  # veths and nft rules need root: slirp4netns instead (network/slirp.py)
            from .network import slirp

            slirp.executable()
        last = sum(m["size"] for m in maps["gidMappings"]) - 1
        if "net.ipv4.ping_group_range" in linux.get("sysctl", {}):
            linux["sysctl"]["net.ipv4.ping_group_range"] = f"0 {last}"
        cfg["annotations"][userns.ANN_ROOTLESS] = "true"
        cfg["annotations"].pop(spec.ANN_IDMAP, None)
        if not self._delegated_cgroup():
            asked = (lim.memory, lim.memory_swap, lim.cpus, lim.cpu_shares, lim.pids_limit)
            if any(v is not None for v in asked):
                raise InvalidArgument(
                    "limits (--memory, --cpus, --pids-limit, ...) need a cgroup delegated to you: "
                    "ask root to run `cellbox system delegate "
                    f"{userns.user_name(os.getuid())}`, or run without limits"
                )
            linux.pop("cgroupsPath", None)
            linux["resources"] = {}

    def _delegated_cgroup(self) -> bool:
        """Whether this user may make cgroups below the engine's parent (delegated by root
        with `cellbox system delegate USER`, runtime/cgroups/delegate.py)."""
        return self.limits_status().available

    def rootless_warnings(self) -> list[str]:
        """One line for each thing a rootless container here will not have (printed by
        `cellbox run` and `create`); none for root."""
        if not rootless():
            return []
        out = []
        if not userns.rootless_mappings(os.getuid(), os.getgid())[1]:
            out.append(userns.NO_SUBIDS_WARNING.format(user=userns.user_name(os.getuid())))
        limits = self.limits_status()
        if not limits.available:
            out.append(f"cellbox: warning: {limits.reason}")
        return out

    def unenforced_limits(self) -> dict[str, str]:
        """The limits this engine's containers cannot be given, each with one line why
        ("memory", "cpus", "pids", "disk"): an ordinary user gets cgroup limits only in a
        group delegated to them, and no disk of its own (a loop mount needs root). The
        kernel leaves these out and shows the lines in %cellbox status, the panel and the page."""
        if not rootless():
            return {}
        out = {}
        limits = self.limits_status()
        if not limits.available:
            out = dict.fromkeys(("memory", "cpus", "pids"), limits.reason)
        out["disk"] = DISK_NEEDS_ROOT
        return out

    def create(
        self,
        opts: RunOptions,
        *,
        stdin: launcher.Stdio = None,
        stdout: launcher.Stdio = None,
        stderr: launcher.Stdio = None,
        console_fd: int | None = None,
    ) -> Container:
        """Create a container (namespaces, cgroup, rootfs ready; not yet started).

        stdout/stderr default to the container's log file (a detached container).
        """
        from .cgroups import check_parent

        if not rootless() or self._delegated_cgroup():
            check_parent(self.cgroup_parent)
        if opts.name is not None:
            validate_name(opts.name)
        import secrets  # here: `cellbox ps` and friends never need it (hmac, hashlib, base64)

        cid = secrets.token_hex(32)
        ctr_dir = self.containers_dir / cid
        with self._lock():
            names = {c.name for c in self._all()}
            name = opts.name or random_name(names)
            if name in names:
                other = next(c for c in self._all() if c.name == name)
                raise Conflict(
                    f'the container name "/{name}" is already in use by container "{other.id}". '
                    "You have to remove (or rename) that container to be able to reuse that name."
                )
            ctr_dir.mkdir(mode=0o700)
            try:
                size = runconfig.limits(opts).disk
                if size and rootless():
                    raise InvalidArgument(f"--storage-opt size=: {DISK_NEEDS_ROOT}")
                writable = storage.create(ctr_dir, size) if size else ctr_dir
                for sub in ("upper", "work", "merged"):
                    (writable if sub != "merged" else ctr_dir).joinpath(sub).mkdir(exist_ok=True)
                cfg, image_ref, image_id = self.build_config(ctr_dir, cid, opts, writable)
                base = userns.host_base(cfg)
                if base is not None and not rootless():
                    # The init, already container root, must reach its rootfs: its
                    # group may pass through this dir; nobody else on the host.
                    os.chown(ctr_dir, 0, base)
                    os.chmod(ctr_dir, 0o710)
                hostname = cfg["hostname"]
                (ctr_dir / "hostname").write_text(hostname + "\n")
                from .network import etc_hosts, resolv_conf

                (ctr_dir / "hosts").write_text(etc_hosts(hostname, None))
                (ctr_dir / "resolv.conf").write_text(resolv_conf())
                # Atomic, fsynced below while the monitor sets up (4 fsyncs, tens of ms on
                # a busy disk, off the start's path); a --rm container is not meant to
                # outlive its command: never. After a power loss a record is whole or absent.
                state.write_json(ctr_dir / "config.json", cfg, durable=False)
                ctr = Container(
                    id=cid,
                    name=name,
                    dir=ctr_dir,
                    created=state.now(),
                    options=dataclasses.asdict(opts),
                    image=image_ref,
                    image_id=image_id,
                )
                self._save(ctr, durable=False)
                state.save(ctr_dir, state.State(id=cid, bundle=str(ctr_dir), annotations={"name": name}))
                if image_id:
                    self.images.retain(image_id, cid)
            except BaseException:
                storage.unmount(ctr_dir)
                shutil.rmtree(ctr_dir, ignore_errors=True)
                raise
        records = (ctr_dir / "config.json", ctr_dir / "container.json")
        try:
            log = None
            if stdout is None or stderr is None:
                log = open(ctr.log_path, "ab")
            try:
                self._monitors[cid] = self._creator()(
                    ctr_dir,
                    stdin=stdin,
                    stdout=stdout if stdout is not None else log,
                    stderr=stderr if stderr is not None else log,
                    console_fd=console_fd,
                    then=None if opts.auto_remove else lambda: atomicfile.fsync_paths(*records),
                )
            finally:
                if log:
                    log.close()
            self._setup_network(ctr, opts)
        except BaseException:
            self._destroy(ctr)
            raise
        return ctr

    def _setup_network(self, ctr: Container, opts: RunOptions, started: bool = False) -> None:
        from .network import parse_network, parse_publish

        net = parse_network(opts.network)
        if net.mode != "bridge":
            if opts.publish:
                raise InvalidArgument(f"ports can only be published with --network bridge, not {net.mode}")
            return
        if rootless() and not started:
            return  # at start (_start)
        st = ctr.state()
        if rootless():
            from .network import slirp

            sock = self.run_dir / f"{ctr.id[:12]}.slirp.sock"
            info = slirp.setup(ctr.dir, sock, st.pid, list(opts.publish), ctr.config()["hostname"])
        else:
            publish = [parse_publish(p) for p in opts.publish]
            info = self.network.setup(
                ctr.id, f"/proc/{st.pid}/ns/net", net, publish, hostname=ctr.config()["hostname"]
            )
        ctr.network = {
            "mode": "bridge" if rootless() else info.mode,
            "ip": info.ip,
            "gateway": info.gateway,
            "ports": [str(p) for p in info.ports],
        }
        self._save(ctr)
        # Rewrite in place: the container has these files bind-mounted (same inode).
        with open(ctr.dir / "hosts", "w") as f:
            f.write(info.hosts)
        if info.resolv_conf:
            with open(ctr.dir / "resolv.conf", "w") as f:
                f.write(info.resolv_conf)

    def _teardown_network(self, ctr: Container) -> None:
        if rootless():
            from .network import slirp

            slirp.teardown(ctr.dir)
        else:
            self.network.teardown(ctr.id)

    def _start(self, ctr: Container) -> None:
        """Open the gate; rootless, then slirp4netns: it can enter the namespaces only
        through the user's process (the init is not dumpable), so only once that exists."""
        launcher.start(ctr.dir)
        if rootless() and not ctr.network:
            opts = RunOptions(**{k: v for k, v in ctr.options.items() if k in RunOptions.__dataclass_fields__})
            self._setup_network(ctr, opts, started=True)

    def start(self, ref: str) -> Container:
        ctr = self.get(ref)
        self._start(ctr)
        return ctr

    def run(self, opts: RunOptions, **stdio: Any) -> Container:
        """create + start; the caller waits with wait()."""
        ctr = self.create(opts, **stdio)
        try:
            self._start(ctr)
        except BaseException:
            self._destroy(ctr)
            raise
        return ctr

    def wait(self, ref: str, timeout: float | None = None) -> int:
        """Block until the container stops; its exit code (Docker's 128+N for a signal)."""
        ctr = self.get(ref)
        monitor = self._monitors.pop(ctr.id, None)
        if monitor is not None:
            try:
                monitor.wait(timeout)
            except Exception:  # noqa: BLE001 - fall back to polling the record
                self._monitors[ctr.id] = monitor
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        while True:
            st = ctr.state()
            if st.status == state.STOPPED:
                # The monitor writes the exit code just after the init dies.
                for _ in range(200):
                    if st.exit_code is not None:
                        break
                    time.sleep(0.005)
                    st = ctr.state()
                return st.exit_code if st.exit_code is not None else 137
            if deadline is not None and time.monotonic() > deadline:
                raise CellboxError(f"timed out waiting for container {ctr.short_id}")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    # ------------------------------------------------------------------ lifecycle

    def _cgroup(self, ctr: Container) -> Any:
        from .cgroups import open_cgroup

        path = (ctr.config().get("linux") or {}).get("cgroupsPath", "")
        if not path.strip("/"):
            return NoCgroup(ctr)  # rootless without delegation: never the root group
        return open_cgroup(path.strip("/"))

    def charge_memory(self, ref: str, pid: int) -> None:
        """Move host process `pid` into the container's memory cgroup only (v2: its group).

        For a host helper that holds what the container sends it (the kernel's relay):
        that memory counts against the container's limit, and an OOM there kills the
        helper, never the process that started it. Not its freezer or pids group.
        """
        from .cgroups import fsio

        cg = self._cgroup(self.get(ref))
        if isinstance(cg, NoCgroup):  # rootless without a delegated group: no limit to charge
            raise CellboxError(f"container {ref[:12]} has no memory cgroup")
        h = cg.layout.v1_for("memory")
        d = os.path.join(h.mountpoint, cg.path) if h else (cg.dirs()[-1] if cg.layout.mode == "v2" else None)
        if d is None or not os.path.isdir(d):
            raise CellboxError(f"container {ref[:12]} has no memory cgroup")
        fsio.write(os.path.join(d, "cgroup.procs"), str(int(pid)))

    def kill(self, ref: str, sig: int | str = "KILL") -> None:
        ctr = self.get(ref)
        signum = parse_signal(sig)
        st = ctr.state()
        if st.status not in (state.RUNNING, state.PAUSED, state.CREATED):
            raise Conflict(f"container {ctr.short_id} is not running")
        if signum == signal_mod.SIGKILL:
            self._cgroup(ctr).kill_all()
        try:
            os.kill(st.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self, ref: str, timeout: float = 10) -> Container:
        """SIGTERM, then SIGKILL to every member after `timeout` seconds."""
        ctr = self.get(ref)
        st = ctr.state()
        if st.status == state.STOPPED:
            return ctr
        cg = self._cgroup(ctr)
        if st.status == state.PAUSED:
            cg.thaw()
        else:
            self._thaw_orphan(ctr)  # frozen by a dead copy: a signal would never arrive
        if st.status == state.CREATED:
            timeout = 0
        try:
            os.kill(st.pid, signal_mod.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while ctr.state().status != state.STOPPED and time.monotonic() < deadline:
            time.sleep(0.02)
        if ctr.state().status != state.STOPPED:
            cg.kill_all()
            try:
                os.kill(st.pid, signal_mod.SIGKILL)
            except ProcessLookupError:
                pass
        self._wait_stopped(ctr)
        return ctr

    def _wait_stopped(self, ctr: Container, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = ctr.state()
            if st.status == state.STOPPED and st.exit_code is not None:
                return
            if st.status == state.STOPPED and not st.alive():
                # No monitor wrote an exit code (it was killed): record what we know.
                time.sleep(0.05)
                st = ctr.state()
                if st.exit_code is None:
                    st.exit_code = 137
                    state.save(ctr.dir, st)
                return
            time.sleep(0.01)

    def pause(self, ref: str) -> None:
        """Freeze every process; a marker covers the freeze until the state says paused,
        so a pause killed in between is thawed by recovery, not left frozen as "running"."""
        from .engine_images import mark_freezer

        ctr = self.get(ref)
        st = ctr.state()
        if st.status != state.RUNNING:
            raise Conflict(f"container {ctr.short_id} is not running")
        if owners := self._freeze_owners(ctr):
            raise Conflict(f"container {ctr.short_id} is frozen for a copy ({', '.join(owners)}): try again when it ends")
        marker = mark_freezer(ctr.dir, "pause")
        try:
            self._cgroup(ctr).freeze()
            st.status = state.PAUSED
            state.save(ctr.dir, st)
        finally:
            marker.unlink(missing_ok=True)

    def unpause(self, ref: str) -> None:
        """Thaw a paused container, or one a dead cellbox process left frozen while running."""
        ctr = self.get(ref)
        st = ctr.state()
        if st.status == state.RUNNING:
            if self._thaw_orphan(ctr):
                return
            if owners := self._freeze_owners(ctr):
                raise Conflict(f"container {ctr.short_id} is frozen for a copy ({', '.join(owners)}): it thaws when that ends")
        if st.status != state.PAUSED:
            raise Conflict(f"container {ctr.short_id} is not paused")
        self._cgroup(ctr).thaw()
        st.status = state.RUNNING
        state.save(ctr.dir, st)

    def remove(self, ref: str, force: bool = False) -> None:
        ctr = self.get(ref)
        st = ctr.state()
        if st.status != state.STOPPED:
            if not force:
                raise Conflict(
                    f"cannot remove container {ctr.short_id}: container is {st.status}: stop the container before removing or force remove"
                )
            cg = self._cgroup(ctr)
            # paused, or frozen by a copy (whose owner may be dead): a frozen task never dies
            try:
                if st.status == state.PAUSED or (cg.exists() and cg.frozen()):
                    cg.thaw()
            except CellboxError:  # no freezer at all: nothing can be frozen
                pass
            cg.kill_all()
            try:
                os.kill(st.pid, signal_mod.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait_stopped(ctr)
        self._destroy(ctr)

    def _destroy(self, ctr: Container) -> None:
        """Remove everything a container owns; each step tolerates a missing piece."""
        errors = []
        self._monitors.pop(ctr.id, None)  # a long-lived engine must not keep its fd
        try:
            self._cgroup(ctr).destroy()
        except Exception as e:  # noqa: BLE001
            errors.append(f"cgroup: {e}")
        if ctr.network or (ctr.options or {}).get("network") == "bridge":
            try:
                self._teardown_network(ctr)
            except Exception as e:  # noqa: BLE001
                errors.append(f"network: {e}")
        if ctr.image_id:
            try:
                self.images.release(ctr.id)
            except Exception as e:  # noqa: BLE001
                errors.append(f"image: {e}")
        try:
            storage.unmount(ctr.dir)
        except Exception as e:  # noqa: BLE001
            errors.append(f"storage: {e}")
        with self._lock():
            userns.rmtree(ctr.dir)  # rootless: files of the user's subordinate ids too
        if errors:
            raise CellboxError(f"container {ctr.short_id} removed, but: {'; '.join(errors)}")

    # ------------------------------------------------------------------ exec

    def exec(
        self,
        ref: str,
        command: list[str],
        *,
        env: list[str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        tty: bool = False,
        stdin: launcher.Stdio = None,
        stdout: launcher.Stdio = None,
        stderr: launcher.Stdio = None,
        console_fd: int | None = None,
        detach: bool = False,
    ) -> Any:
        """Start COMMAND in the running container; returns the helper (wait() = exit code)."""
        if not command:
            raise InvalidArgument("no command specified")
        ctr = self.get(ref)
        self._thaw_orphan(ctr)  # a commit killed mid-freeze must not hang every exec after it
        cfg = ctr.config()
        proc = dict(cfg["process"])
        proc["args"] = list(command)
        proc["env"] = merge_env(proc.get("env") or [], parse_env(env or []))
        proc["terminal"] = tty
        if workdir:
            if not workdir.startswith("/"):
                raise InvalidArgument(f"the working directory '{workdir}' is invalid: it needs to be an absolute path")
            proc["cwd"] = workdir
        annotations = {}
        if user:
            proc["user"], name = parse_user(user)
            if name:
                annotations[spec.ANN_USER] = name
        elif (cfg.get("annotations") or {}).get(spec.ANN_USER):
            annotations[spec.ANN_USER] = cfg["annotations"][spec.ANN_USER]
        if user and "capabilities" in proc:
            from .security import capabilities

            caps = proc["capabilities"].get("bounding") or []
            proc["capabilities"] = capabilities.oci_capabilities(caps, proc["user"]["uid"])
        proc["annotations"] = annotations
        zygote = None
        if self.use_zygote:
            from .zygote import Zygote

            zygote = Zygote.shared()
        return launcher.exec_process(
            ctr.dir, proc, stdin=stdin, stdout=stdout, stderr=stderr, console_fd=console_fd, detach=detach,
            zygote=zygote,
        )  # fmt: skip

    # ------------------------------------------------------------------ restart

    def restart(self, ref: str, timeout: float = 10) -> Container:
        """Stop, then start the same container again: its filesystem and name are kept."""
        ctr = self.stop(ref, timeout=timeout)
        self._recreate(ctr)
        self._start(ctr)
        return ctr

    def _recreate(self, ctr: Container) -> None:
        old = ctr.state()
        if old.status != state.STOPPED:
            raise Conflict(f"container {ctr.short_id} is {old.status}")
        try:
            self._cgroup(ctr).destroy()
        except Exception:  # noqa: BLE001 - a stale group is recreated below anyway
            pass
        if ctr.network:
            self._teardown_network(ctr)
            ctr.network = {}
        state.save(ctr.dir, state.State(id=ctr.id, bundle=str(ctr.dir), annotations={"name": ctr.name}))
        with open(ctr.log_path, "ab") as log:
            self._monitors[ctr.id] = self._creator()(ctr.dir, stdout=log, stderr=log)
        self._setup_network(ctr, RunOptions(**{k: v for k, v in ctr.options.items() if k in RunOptions.__dataclass_fields__}))

    # ------------------------------------------------------------------ inspection

    def list(self, all: bool = False) -> list[Container]:
        ctrs = sorted(self._all(), key=lambda c: c.created, reverse=True)
        if not all:
            ctrs = [c for c in ctrs if _status_or_gone(c) in (state.RUNNING, state.PAUSED)]
        return ctrs

    def inspect(self, ref: str) -> dict[str, Any]:
        ctr = self.get(ref)
        st = ctr.state()
        cfg = ctr.config()
        return {
            "Id": ctr.id,
            "Name": "/" + ctr.name,
            "Created": ctr.created,
            "Image": ctr.image_id or ctr.options.get("rootfs") or "",
            "ImageName": ctr.image,
            "State": {
                "Status": "exited" if st.status == state.STOPPED else st.status,
                "Running": st.status == state.RUNNING,
                "Paused": st.status == state.PAUSED,
                "OOMKilled": st.oom_killed,
                "Pid": st.pid if st.status != state.STOPPED else 0,
                "ExitCode": st.exit_code or 0,
                "Error": st.error,
                "StartedAt": st.started,
                "FinishedAt": st.finished,
            },
            "Path": cfg["process"]["args"][0],
            "Args": cfg["process"]["args"][1:],
            "Config": {
                "Hostname": cfg.get("hostname"),
                "Env": cfg["process"].get("env"),
                "Cmd": cfg["process"]["args"],
                "WorkingDir": cfg["process"].get("cwd"),
                "User": ctr.options.get("user") or "",
                "Tty": cfg["process"].get("terminal", False),
                "Labels": ctr.options.get("labels") or {},
            },
            "HostConfig": {
                "Memory": ((cfg["linux"].get("resources") or {}).get("memory") or {}).get("limit", 0),
                "NanoCpus": int((ctr.options.get("cpus") or 0) * 1e9),
                "PidsLimit": ((cfg["linux"].get("resources") or {}).get("pids") or {}).get("limit"),
                "ReadonlyRootfs": cfg["root"].get("readonly", False),
                "CapAdd": ctr.options.get("cap_add") or [],
                "CapDrop": ctr.options.get("cap_drop") or [],
                "NetworkMode": ctr.options.get("network") or "none",
                "Binds": ctr.options.get("volumes") or [],
                "Mounts": ctr.options.get("mounts") or [],
                "AutoRemove": ctr.options.get("auto_remove", False),
            },
            "NetworkSettings": ctr.network,
            "GraphDriver": {"Name": "overlay", "Data": {"UpperDir": str(ctr.upper), "LowerDir": cfg["annotations"].get(spec.ANN_LOWER, "")}},
            "LogPath": str(ctr.log_path),
            "Mounts": [
                {"Type": m.get("type"), "Source": m.get("source"), "Destination": m["destination"],
                 "RW": "ro" not in (m.get("options") or []), "Idmapped": bool(m.get("uidMappings"))}
                for m in cfg.get("mounts") or []
                if m.get("type") in ("bind", "tmpfs") and m["destination"] not in ("/dev", "/dev/shm")
                and not m["destination"].startswith("/etc/")
            ],  # fmt: skip
        }

    def stats(self, ref: str) -> dict[str, Any]:
        ctr = self.get(ref)
        st = ctr.state()
        if st.status == state.STOPPED:
            return {"id": ctr.id, "name": ctr.name, "memory": {}, "cpu": {}, "pids": {}}
        s = self._cgroup(ctr).stats()
        return {"id": ctr.id, "name": ctr.name, "read": state.now(), **s}

    def top(self, ref: str) -> list[dict[str, Any]]:
        """The container's processes as the host sees them (like `docker top`)."""
        ctr = self.get(ref)
        if ctr.state().status == state.STOPPED:
            raise Conflict(f"container {ctr.short_id} is not running")
        rows = []
        for pid in sorted(self._cgroup(ctr).procs()):
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").strip().decode(errors="replace")
                uid = os.stat(f"/proc/{pid}").st_uid
            except OSError:
                continue
            fields = stat[stat.rindex(b")") + 2 :].split()
            ticks = os.sysconf("SC_CLK_TCK")
            cpu = (int(fields[11]) + int(fields[12])) / ticks
            rows.append({"UID": uid, "PID": pid, "PPID": int(fields[1]), "TIME": f"{cpu:.2f}s", "CMD": cmd[:200]})
        return rows

    def logs(self, ref: str, follow: bool = False) -> Iterator[bytes]:
        ctr = self.get(ref)
        try:
            f = open(ctr.log_path, "rb")
        except FileNotFoundError:
            return
        with f:
            while True:
                chunk = f.read(65536)
                if chunk:
                    yield chunk
                    continue
                if not follow or ctr.state().status == state.STOPPED:
                    rest = f.read()
                    if rest:
                        yield rest
                    return
                time.sleep(0.1)

    def prune(self) -> list[str]:
        """Remove every stopped container."""
        removed = []
        for c in self._all():
            if c.state().status == state.STOPPED:
                self._destroy(c)
                removed.append(c.id)
        return removed


__all__ = [
    "CREATED",
    "DEFAULT_IMAGE",
    "PAUSED",
    "RUNNING",
    "STOPPED",
    "Container",
    "Engine",
    "Reference",
    "parse_reference",
    "proc_start_time",
    "Isolation",
    "Limits",
    "RunOptions",
    "default_root",
    "default_run_dir",
    "rootless",
    "parse_signal",
    "probe_isolation",
]
