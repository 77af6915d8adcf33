"""Container commands: run, create, start, ps, stop, kill, rm, exec, logs, inspect, stats,
pause, unpause, top, wait."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from ..errors import CellboxError, InvalidArgument
from .common import ago, bytes_size, engine, print_json, print_json_line, table

if TYPE_CHECKING:  # the engine is imported by the commands that run, never by `--help`
    from ..engine import Engine, RunOptions


def _kv(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep:
            raise InvalidArgument(f"invalid KEY=VALUE: {item}")
        out[k] = v
    return out


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rm", action="store_true", help="Automatically remove the container when it exits")
    p.add_argument("-d", "--detach", action="store_true", help="Run container in background and print container ID")
    p.add_argument("--name", help="Assign a name to the container")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V", help="Set environment variables")
    p.add_argument("-w", "--workdir", help="Working directory inside the container")
    p.add_argument("-h", "--hostname", help="Container host name")
    p.add_argument("-u", "--user", help="Username or UID (format: <name|uid>[:<group|gid>])")
    p.add_argument(
        "-v", "--volume", action="append", default=[], metavar="SRC|NAME:DST[:ro]",
        help="Bind mount a host path, or a named volume (created if missing)",
    )  # fmt: skip
    p.add_argument(
        "--mount", action="append", default=[], metavar="type=bind|volume|tmpfs,...",
        help="Attach a filesystem mount to the container (Docker's keys: source, target, readonly, tmpfs-size)",
    )  # fmt: skip
    p.add_argument("-m", "--memory", help="Memory limit (e.g. 256m)")
    p.add_argument("--memory-swap", help="Swap limit equal to memory plus swap: -1 for unlimited swap")
    p.add_argument("--cpus", type=float, help="Number of CPUs")
    p.add_argument("-c", "--cpu-shares", type=int, help="CPU shares (relative weight)")
    p.add_argument("--pids-limit", type=int, help="Tune container pids limit (-1 for unlimited)")
    p.add_argument("--read-only", action="store_true", help="Mount the container's root filesystem as read only")
    p.add_argument("--cap-add", action="append", default=[], help="Add Linux capabilities")
    p.add_argument("--cap-drop", action="append", default=[], help="Drop Linux capabilities")
    p.add_argument("--security-opt", action="append", default=[], help="Security options (seccomp=unconfined|FILE, no-new-privileges)")
    p.add_argument("--sysctl", action="append", default=[], metavar="K=V", help="Sysctl options")
    p.add_argument("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]", help="Ulimit options (e.g. nofile=1024:2048)")
    p.add_argument(
        "--storage-opt", action="append", default=[], metavar="size=SIZE",
        help="Storage driver options: size=SIZE caps the container's writable layer (a filesystem of its own)",
    )  # fmt: skip
    p.add_argument("-i", "--interactive", action="store_true", help="Keep STDIN open even if not attached")
    p.add_argument("-t", "--tty", action="store_true", help="Allocate a pseudo-TTY")
    p.add_argument("--network", "--net", default="none", help="Connect a container to a network (none, bridge, host, container:NAME)")
    p.add_argument("-p", "--publish", action="append", default=[], help="Publish a container's port(s) to the host")
    p.add_argument("--entrypoint", help="Overwrite the default ENTRYPOINT of the image")
    p.add_argument("-l", "--label", action="append", default=[], help="Set meta data on a container")
    p.add_argument("--rootfs", help="Use this directory as the root filesystem instead of an image (never written)")
    p.add_argument(
        "--pull", choices=PULL_POLICIES, default="missing",
        help='Pull image before running: "missing" (default: only when not here), "always" or "never"',
    )  # fmt: skip
    p.add_argument(
        "--userns", choices=("auto", "host"),
        help='User namespace: "auto" gives container root an unprivileged host id range of its own '
        '(/etc/subuid "cellbox"); "host" (default) shares the host\'s ids, as Docker does',
    )  # fmt: skip
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="IMAGE [COMMAND] [ARG...]")


# A refused limit names the flag the user typed (runtime/limits.py).
LIMIT_FLAGS = {
    "memory": "--memory", "memory_swap": "--memory-swap", "cpus": "--cpus", "cpu_shares": "--cpu-shares",
    "pids_limit": "--pids-limit", "ulimits": "--ulimit", "storage_opts": "--storage-opt",
}  # fmt: skip


def _options(a: argparse.Namespace) -> RunOptions:
    from ..engine import Limits, RunOptions

    limits = Limits.parse(
        {"memory": a.memory, "memory_swap": a.memory_swap, "cpus": a.cpus, "cpu_shares": a.cpu_shares,
         "pids_limit": a.pids_limit, "ulimits": a.ulimit, "storage_opts": a.storage_opt},
        names=LIMIT_FLAGS,
    )  # fmt: skip
    args = list(a.args)
    if args and args[0] == "--":
        args = args[1:]
    image = None
    if not a.rootfs:
        if not args:
            raise InvalidArgument('"run" requires at least 1 argument: an IMAGE (or --rootfs DIR)')
        image = args.pop(0)
    return RunOptions(
        image=image,
        rootfs=a.rootfs,
        command=args,
        entrypoint=[a.entrypoint] if a.entrypoint else ([] if a.entrypoint == "" else None),
        name=a.name,
        env=a.env,
        workdir=a.workdir,
        hostname=a.hostname,
        user=a.user,
        volumes=a.volume,
        mounts=a.mount,
        read_only=a.read_only,
        cap_add=a.cap_add,
        cap_drop=a.cap_drop,
        security_opt=a.security_opt,
        tty=a.tty,
        interactive=a.interactive,
        network=a.network,
        publish=a.publish,
        labels=_kv(a.label),
        auto_remove=a.rm,
        sysctls=_kv(a.sysctl),
        userns=a.userns or "",
        **limits.options(),
    )


PULL_POLICIES = ("missing", "always", "never")


def _pull_image(eng: Engine, image: str | None, policy: str) -> None:
    """Docker's `run --pull`: fetch the image from its registry when asked or absent.

    Without it an absent image ended `run` with only "no such image", where Docker pulls.
    The default image is never pulled: it is built here, offline, from this Python (no
    registry has it). Pull progress goes to stderr, so `create` and `run -d` still print
    only the container id on stdout.
    """
    if image is None:
        return
    from ..errors import NotFound

    if policy != "always":
        try:
            eng.images.resolve(image)
            return
        except NotFound:
            if policy == "never":
                raise NotFound(f"no such image: {image} (not pulled: --pull never)") from None
    from ..images.default_image import DEFAULT_IMAGE

    if image == DEFAULT_IMAGE:
        eng.ensure_default_image()
        return
    if policy != "always":
        sys.stderr.write(f"Unable to find image '{image}' locally\n")
    img = eng.pull(image)
    sys.stderr.write(f"Digest: {img.manifest_digest}\nStatus: Downloaded newer image for {image}\n")


def _forward_signals(eng: Engine, cid: str) -> None:
    """Like `docker run --sig-proxy`: signals to the command reach the container."""
    import signal

    def forward(signum: int, _frame: Any) -> None:
        try:
            eng.kill(cid, signum)
        except CellboxError:
            pass

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, forward)


def _warn_rootless(eng: Engine) -> None:
    """An ordinary user's container: one line for each thing it lacks (limits, ids)."""
    for line in eng.rootless_warnings():
        print(line, file=sys.stderr)


def cmd_run(a: argparse.Namespace, create_only: bool = False) -> int:
    import subprocess

    eng = engine(a)
    eng.fork_monitor = True  # this command is single-threaded: no helper interpreter
    opts = _options(a)
    _pull_image(eng, opts.image, a.pull)
    if create_only or a.detach:
        ctr = eng.create(opts)
        _warn_rootless(eng)
        if not create_only:
            eng.start(ctr.id)
        print(ctr.id)
        return 0
    if opts.tty:
        from . import tty as tty_mod

        ours, theirs = tty_mod.console_pair()
        stdin = None
        ctr = eng.create(
            opts, stdin=subprocess.DEVNULL, stdout=sys.stdout, stderr=sys.stderr, console_fd=theirs.fileno()
        )
        theirs.close()
        _warn_rootless(eng)
        master = tty_mod.receive_master(ours)
        eng.start(ctr.id)
        _forward_signals(eng, ctr.id)
        tty_mod.attach(master, opts.interactive, lambda: ctr.state().status == "stopped")
    else:
        stdin = sys.stdin if opts.interactive else subprocess.DEVNULL
        ctr = eng.create(opts, stdin=stdin, stdout=sys.stdout, stderr=sys.stderr)
        _warn_rootless(eng)
        eng.start(ctr.id)
        _forward_signals(eng, ctr.id)
    code = eng.wait(ctr.id)
    if opts.auto_remove:
        eng.remove(ctr.id, force=True)
    return code


def cmd_start(a: argparse.Namespace) -> int:
    """Docker's `start`: a created container starts; an exited one starts again (same
    filesystem, name and limits; its cgroup, removed when it stopped, is made again)."""
    eng = engine(a)
    eng.fork_monitor = True  # as in run
    for ref in a.containers:
        if eng.get(ref).state().status == "stopped":
            ctr = eng.restart(ref)
        else:
            ctr = eng.start(ref)
        if a.attach:
            return eng.wait(ctr.id)
        print(ref)
    return 0


def cmd_restart(a: argparse.Namespace) -> int:
    eng = engine(a)
    for ref in a.containers:
        eng.restart(ref, timeout=a.time)
        print(ref)
    return 0


def cmd_ps(a: argparse.Namespace) -> int:
    eng = engine(a)
    ctrs = eng.list(all=a.all)
    if a.quiet:
        for c in ctrs:
            print(c.id if a.no_trunc else c.short_id)
        return 0
    rows = []
    out = []
    for c in ctrs:
        st = c.state()
        cmd = " ".join(c.config()["process"]["args"])
        if st.status == "stopped":
            status = f"Exited ({st.exit_code if st.exit_code is not None else '?'}) {ago(st.finished)}"
        elif st.status == "paused":
            status = f"Up {ago(st.started).replace(' ago', '')} (Paused)"
        elif st.status == "created":
            status = "Created"
        else:
            status = f"Up {ago(st.started).replace(' ago', '')}"
        image = c.image or (c.options.get("rootfs") or "")
        ports = ", ".join((c.network or {}).get("ports") or [])
        out.append(
            {"ID": c.id, "Names": c.name, "Image": image, "Command": cmd, "CreatedAt": c.created, "State": "exited" if st.status == "stopped" else st.status, "Status": status, "Ports": ports, "Pid": st.pid if st.status != "stopped" else 0}
        )
        if not a.no_trunc and len(cmd) > 20:
            cmd = cmd[:19] + "…"
        rows.append([c.id if a.no_trunc else c.short_id, image, f'"{cmd}"', ago(c.created), status, ports, c.name])
    if a.format == "json":
        for o in out:
            print_json_line(o)
        return 0
    if a.format:
        raise InvalidArgument(f"unsupported --format {a.format!r}: use json")
    table(rows, ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"])
    return 0


def _each(a: argparse.Namespace, fn: Any) -> int:
    """Apply fn to every named container; report failures like Docker and keep going."""
    failed = 0
    for ref in a.containers:
        try:
            fn(ref)
            print(ref)
        except CellboxError as e:
            sys.stderr.write(f"cellbox: {e}\n")
            failed = 1
    return failed


def cmd_stop(a: argparse.Namespace) -> int:
    eng = engine(a)
    return _each(a, lambda r: eng.stop(r, timeout=a.time))


def cmd_kill(a: argparse.Namespace) -> int:
    from ..engine import parse_signal

    eng = engine(a)
    sig = parse_signal(a.signal)
    return _each(a, lambda r: eng.kill(r, sig))


def cmd_rm(a: argparse.Namespace) -> int:
    eng = engine(a)
    return _each(a, lambda r: eng.remove(r, force=a.force))


def cmd_pause(a: argparse.Namespace) -> int:
    eng = engine(a)
    return _each(a, eng.pause)


def cmd_unpause(a: argparse.Namespace) -> int:
    eng = engine(a)
    return _each(a, eng.unpause)


def cmd_wait(a: argparse.Namespace) -> int:
    eng = engine(a)
    for ref in a.containers:
        print(eng.wait(ref))
    return 0


def cmd_exec(a: argparse.Namespace) -> int:
    import subprocess

    eng = engine(a)
    command = list(a.command)
    if command and command[0] == "--":
        command = command[1:]
    if a.tty:
        from . import tty as tty_mod

        ours, theirs = tty_mod.console_pair()
        helper = eng.exec(
            a.container, command, env=a.env, workdir=a.workdir, user=a.user, tty=True,
            stdin=subprocess.DEVNULL, stdout=sys.stdout, stderr=sys.stderr, console_fd=theirs.fileno(),
        )  # fmt: skip
        theirs.close()
        _warn_rootless(eng)
        master = tty_mod.receive_master(ours)
        tty_mod.attach(master, a.interactive, lambda: helper.poll() is not None)
        return helper.wait()
    helper = eng.exec(
        a.container, command, env=a.env, workdir=a.workdir, user=a.user,
        stdin=sys.stdin if a.interactive else subprocess.DEVNULL, stdout=sys.stdout, stderr=sys.stderr,
        detach=a.detach,
    )  # fmt: skip
    if a.detach:
        return 0
    import signal

    signal.signal(signal.SIGINT, lambda *_: helper.send_signal(signal.SIGINT))
    signal.signal(signal.SIGTERM, lambda *_: helper.send_signal(signal.SIGTERM))
    return helper.wait()


def cmd_logs(a: argparse.Namespace) -> int:
    eng = engine(a)
    out = sys.stdout.buffer
    for chunk in eng.logs(a.container, follow=a.follow):
        out.write(chunk)
        out.flush()
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    eng = engine(a)
    results = []
    failed = 0
    for ref in a.names:
        try:
            info = eng.inspect(ref)
            # Docker's (and podman's) field for --userns: "" is the host's ids.
            options = eng.get(ref).options or {}
            info.setdefault("HostConfig", {}).setdefault("UsernsMode", options.get("userns") or "")
            results.append(info)
        except CellboxError:
            try:
                from .images import image_inspect

                results.append(image_inspect(eng.images.resolve(ref)))
            except CellboxError:
                sys.stderr.write(f"cellbox: no such object: {ref}\n")
                failed = 1
    print_json(results)
    return failed


def _host_memory() -> int | None:
    """What `docker stats` shows as the limit of a container without one: the host's RAM."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def _stats_row(s: dict[str, Any]) -> list[str]:
    """One `docker stats` row: memory in binary units, an unlimited limit as the host's RAM."""
    mem = s.get("memory") or {}
    pids = s.get("pids") or {}
    usage, limit = mem.get("usage"), mem.get("limit")
    if usage is not None and limit is None:
        limit = _host_memory()
    pct = f"{100 * usage / limit:.2f}%" if usage is not None and limit else "--"
    cpu = s.get("cpu_percent")
    current = pids.get("current")
    return [
        s["id"][:12],
        s["name"],
        f"{cpu:.2f}%" if cpu is not None else "--",
        f"{bytes_size(usage)} / {bytes_size(limit)}",
        pct,
        "--" if current is None else str(current),
    ]


def cmd_stats(a: argparse.Namespace) -> int:
    eng = engine(a)
    refs = a.containers or [c.id for c in eng.list()]

    def sample() -> list[dict[str, Any]]:
        first = {r: eng.stats(r) for r in refs}
        t0 = time.monotonic()
        time.sleep(0.5)
        out = []
        for r in refs:
            s = eng.stats(r)
            c0 = (first[r].get("cpu") or {}).get("usage_ns")
            c1 = (s.get("cpu") or {}).get("usage_ns")
            if c0 is not None and c1 is not None:
                s["cpu_percent"] = 100 * (c1 - c0) / 1e9 / (time.monotonic() - t0)
            out.append(s)
        return out

    while True:
        rows = sample()
        if a.format == "json":
            for s in rows:
                print_json_line(s)
        else:
            if not a.no_stream and sys.stdout.isatty():  # never escape codes into a pipe or file
                sys.stdout.write("\x1b[2J\x1b[H")
            table([_stats_row(s) for s in rows], ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS"])
        sys.stdout.flush()
        if a.no_stream:
            return 0


def cmd_top(a: argparse.Namespace) -> int:
    eng = engine(a)
    rows = eng.top(a.container)
    table([[r["UID"], r["PID"], r["PPID"], r["TIME"], r["CMD"]] for r in rows], ["UID", "PID", "PPID", "TIME", "CMD"])
    return 0


def cmd_prune(a: argparse.Namespace) -> int:
    eng = engine(a)
    removed = eng.prune()
    if removed:
        print("Deleted Containers:")
        for cid in removed:
            print(cid)
    print(f"Total reclaimed containers: {len(removed)}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="Create and run a new container", usage="cellbox run [OPTIONS] IMAGE [COMMAND] [ARG...]", add_help=False)
    p.add_argument("--help", action="help", help="Print usage")
    _add_run_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("create", help="Create a new container", usage="cellbox create [OPTIONS] IMAGE [COMMAND] [ARG...]", add_help=False)
    p.add_argument("--help", action="help", help="Print usage")
    _add_run_options(p)
    p.set_defaults(func=lambda a: cmd_run(a, create_only=True))

    p = sub.add_parser("start", help="Start one or more created containers", usage="cellbox start [OPTIONS] CONTAINER [CONTAINER...]")
    p.add_argument("-a", "--attach", action="store_true", help="Wait for the container and return its exit code")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("restart", help="Restart one or more containers", usage="cellbox restart [OPTIONS] CONTAINER [CONTAINER...]")
    p.add_argument("-t", "--time", type=float, default=10, help="Seconds to wait before killing a running container (default 10)")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_restart)

    p = sub.add_parser("ps", help="List containers", usage="cellbox ps [OPTIONS]")
    p.add_argument("-a", "--all", action="store_true", help="Show all containers (default shows just running)")
    p.add_argument("-q", "--quiet", action="store_true", help="Only display container IDs")
    p.add_argument("--no-trunc", action="store_true", help="Don't truncate output")
    p.add_argument("--format", help="Format output: json")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("stop", help="Stop one or more running containers", usage="cellbox stop [OPTIONS] CONTAINER [CONTAINER...]")
    p.add_argument("-t", "--time", type=float, default=10, help="Seconds to wait before killing the container (default 10)")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("kill", help="Kill one or more running containers", usage="cellbox kill [OPTIONS] CONTAINER [CONTAINER...]")
    p.add_argument("-s", "--signal", default="KILL", help='Signal to send to the container (default "KILL")')
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_kill)

    p = sub.add_parser("rm", help="Remove one or more containers", usage="cellbox rm [OPTIONS] CONTAINER [CONTAINER...]")
    p.add_argument("-f", "--force", action="store_true", help="Force the removal of a running container (uses SIGKILL)")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_rm)

    for name, fn, text in (("pause", cmd_pause, "Pause all processes within one or more containers"),
                           ("unpause", cmd_unpause, "Unpause all processes within one or more containers"),
                           ("wait", cmd_wait, "Block until one or more containers stop, then print their exit codes")):  # fmt: skip
        p = sub.add_parser(name, help=text, usage=f"cellbox {name} CONTAINER [CONTAINER...]")
        p.add_argument("containers", nargs="+")
        p.set_defaults(func=fn)

    p = sub.add_parser("exec", help="Execute a command in a running container", usage="cellbox exec [OPTIONS] CONTAINER COMMAND [ARG...]")
    p.add_argument("-d", "--detach", action="store_true", help="Detached mode: run command in the background")
    p.add_argument("-e", "--env", action="append", default=[], help="Set environment variables")
    p.add_argument("-i", "--interactive", action="store_true", help="Keep STDIN open even if not attached")
    p.add_argument("-t", "--tty", action="store_true", help="Allocate a pseudo-TTY")
    p.add_argument("-u", "--user", help="Username or UID (format: <name|uid>[:<group|gid>])")
    p.add_argument("-w", "--workdir", help="Working directory inside the container")
    p.add_argument("container")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("logs", help="Fetch the logs of a container", usage="cellbox logs [OPTIONS] CONTAINER")
    p.add_argument("-f", "--follow", action="store_true", help="Follow log output")
    p.add_argument("container")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("inspect", help="Return low-level information on containers or images", usage="cellbox inspect NAME|ID [NAME|ID...]")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("stats", help="Display a live stream of container(s) resource usage statistics", usage="cellbox stats [OPTIONS] [CONTAINER...]")
    p.add_argument("--no-stream", action="store_true", help="Disable streaming stats and only pull the first result")
    p.add_argument("--format", help="Format output: json")
    p.add_argument("containers", nargs="*")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("top", help="Display the running processes of a container", usage="cellbox top CONTAINER")
    p.add_argument("container")
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("container", help="Manage containers (prune)", usage="cellbox container COMMAND")
    csub = p.add_subparsers(dest="subcommand", metavar="COMMAND")
    pp = csub.add_parser("prune", help="Remove all stopped containers", usage="cellbox container prune [OPTIONS]")
    pp.add_argument("-f", "--force", action="store_true", help="Do not prompt for confirmation")
    pp.set_defaults(func=cmd_prune)
    _ = os
