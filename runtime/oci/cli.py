"""`cellbox-runc`: an OCI runtime command line shaped like runc's, over runtime/oci/ops.

Flags follow runc (urfave/cli): global flags before the command, `--flag value` or
`--flag=value`, one or two dashes. Every error is one line (runc's logrus format on
stderr, or JSON with --log-format json) and exit status 1.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from ..errors import CellboxError, InvalidArgument
from .log import Log

TYPE_CHECKING = False  # (importing typing costs a warm `run` a few ms)
if TYPE_CHECKING:
    from typing import Any

VERSION = "0.1.0"
DEFAULT_ROOT = "/run/cellbox-runc"

# Option tables: name -> (dest, kind) with kind "bool", "value" or "list".
Opts = dict[str, tuple[str, str]]

GLOBAL: Opts = {
    "root": ("root", "value"),
    "log": ("log", "value"),
    "log-format": ("log_format", "value"),
    "debug": ("debug", "bool"),
    "systemd-cgroup": ("systemd_cgroup", "bool"),
    "criu": ("criu", "value"),
    "rootless": ("rootless", "value"),
    "help": ("help", "bool"),
    "h": ("help", "bool"),
    "version": ("version", "bool"),
    "v": ("version", "bool"),
}
_IGNORED_GLOBALS = {"systemd_cgroup", "criu", "rootless"}

_CREATE: Opts = {
    "bundle": ("bundle", "value"),
    "b": ("bundle", "value"),
    "pid-file": ("pid_file", "value"),
    "console-socket": ("console_socket", "value"),
    "no-pivot": ("no_pivot", "bool"),
    "no-new-keyring": ("no_new_keyring", "bool"),
    "preserve-fds": ("preserve_fds", "value"),
}
_RUN: Opts = {**_CREATE, "detach": ("detach", "bool"), "d": ("detach", "bool"), "keep": ("keep", "bool")}
_EXEC: Opts = {
    "process": ("process", "value"),
    "p": ("process", "value"),
    "tty": ("tty", "bool"),
    "t": ("tty", "bool"),
    "console-socket": ("console_socket", "value"),
    "detach": ("detach", "bool"),
    "d": ("detach", "bool"),
    "pid-file": ("pid_file", "value"),
    "env": ("env", "list"),
    "e": ("env", "list"),
    "cwd": ("cwd", "value"),
    "user": ("user", "value"),
    "u": ("user", "value"),
    "additional-gids": ("gids", "list"),
    "g": ("gids", "list"),
    "cap": ("caps", "list"),
    "c": ("caps", "list"),
    "no-new-privs": ("no_new_privs", "bool"),
    "preserve-fds": ("preserve_fds", "value"),
}
_COMMANDS: dict[str, tuple[Opts, str]] = {
    # name -> (options, usage of the positional arguments)
    "create": (_CREATE, "ID"),
    "run": (_RUN, "ID"),
    "start": ({}, "ID"),
    "state": ({}, "ID"),
    "kill": ({"all": ("all", "bool"), "a": ("all", "bool")}, "ID [SIGNAL]"),
    "delete": ({"force": ("force", "bool"), "f": ("force", "bool")}, "ID"),
    "exec": (_EXEC, "ID [COMMAND [ARG...]]"),
    "spec": ({"bundle": ("bundle", "value"), "b": ("bundle", "value"), "rootless": ("rootless", "bool")}, ""),
    "features": ({}, ""),
    "ps": ({"format": ("format", "value"), "f": ("format", "value")}, "ID [PS_ARGS...]"),
    "list": ({"format": ("format", "value"), "f": ("format", "value"), "quiet": ("quiet", "bool"), "q": ("quiet", "bool")}, ""),
    "pause": ({}, "ID"),
    "resume": ({}, "ID"),
    "warm": ({}, "(serve foreground `run`s from a warm helper)"),
}


class UnknownFlag(InvalidArgument):
    pass


def parse(argv: list[str], opts: Opts, interspersed: bool = True) -> tuple[dict[str, Any], list[str]]:
    """urfave/cli-like parsing: -f, --flag, --flag=value, --flag value; `--` ends flags."""
    out: dict[str, Any] = {dest: ([] if kind == "list" else None) for dest, kind in opts.values()}
    pos: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            pos.extend(argv[i:])
            break
        if not a.startswith("-") or a == "-" or (pos and not interspersed):
            pos.append(a)
            if not interspersed:
                pos.extend(argv[i:])
                break
            continue
        name, eq, value = a.lstrip("-").partition("=")
        if name not in opts:
            raise UnknownFlag(f"flag provided but not defined: -{name}")
        dest, kind = opts[name]
        if kind == "bool":
            out[dest] = value.lower() not in ("false", "0") if eq else True
            continue
        if not eq:
            if i >= len(argv):
                raise InvalidArgument(f"flag needs an argument: -{name}")
            value = argv[i]
            i += 1
        if kind == "list":
            out[dest].append(value)
        else:
            out[dest] = value
    return out, pos


def parse_global(argv: list[str], log_warn: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Global flags up to the command; unknown ones (podman passes a few) warn and are skipped."""
    out: dict[str, Any] = {dest: None for dest, _ in GLOBAL.values()}
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        a = argv[i]
        i += 1
        if a == "--":
            break
        name, eq, value = a.lstrip("-").partition("=")
        if name not in GLOBAL:
            log_warn.append(f"ignoring unknown global flag {a}")
            continue
        dest, kind = GLOBAL[name]
        if kind == "bool":
            out[dest] = value.lower() not in ("false", "0") if eq else True
        else:
            if not eq:
                if i >= len(argv):
                    raise InvalidArgument(f"flag needs an argument: -{name}")
                value = argv[i]
                i += 1
            out[dest] = value
        if dest in _IGNORED_GLOBALS and out[dest]:
            log_warn.append(f"ignoring --{name}: not supported by cellbox-runc")
    return out, argv[i:]


def _need(pos: list[str], n: int, cmd: str, usage: str, exact: bool = True) -> None:
    if len(pos) < n or (exact and len(pos) > n):
        raise InvalidArgument(
            f'"{cmd}" requires {"exactly" if exact else "at least"} {n} argument(s); usage: cellbox-runc {cmd} {usage}'
        )


def _print_json(obj: Any) -> None:
    import json

    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------- commands


def cmd_create(rt: Any, o: dict[str, Any], pos: list[str], log: Log) -> int:
    _need(pos, 1, "create", "ID")
    created = rt.create(
        pos[0], o["bundle"] or ".", pid_file=o["pid_file"], console_socket=o["console_socket"], warn=log.warning
    )
    log.debug(f"created {created.id}: init pid {created.pid}")
    return 0


def cmd_run(rt: Any, o: dict[str, Any], pos: list[str], log: Log) -> int:
    """create + start; in the foreground wait, forward signals, exit with the container's code."""
    _need(pos, 1, "run", "ID")
    cid = pos[0]
    detach = bool(o["detach"])
    created = rt.create(
        cid, o["bundle"] or ".", pid_file=o["pid_file"], console_socket=o["console_socket"], handoff=detach,
        warn=log.warning,
    )
    if not detach:
        forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)  # fmt: skip

        def forward(signum: int, _frame: object) -> None:
            try:
                os.kill(created.pid, signum)
            except ProcessLookupError:
                pass

        for s in forwarded:
            signal.signal(s, forward)
    try:
        rt.start(cid)
    except BaseException:
        rt.delete(cid, force=True, warn=log.warning)
        raise
    if detach:
        return 0
    while True:
        try:
            _, status = os.waitpid(created.monitor_pid, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code
    st = rt.load(cid)[1]
    if st.exit_code is not None:
        code = st.exit_code
    if not o["keep"]:
        rt.delete(cid, force=True, warn=log.warning)
    return code


def cmd_start(rt: Any, o: dict[str, Any], pos: list[str], log: Log) -> int:
    _need(pos, 1, "start", "ID")
    rt.start(pos[0])
    return 0


def cmd_state(rt: Any, o: dict[str, Any], pos: list[str], log: Log) -> int:
    _need(pos, 1, "state", "ID")
    _print_json(rt.state_json(pos[0]))
    return 0


def cmd_kill(rt: Any, o: dict[str, Any], pos: list[str], log: Log) -> int:
    _need(pos, 1, "kill", "ID [SIGNAL]", exact=False)
    if len(pos) > 2:
        raise InvalidArgument('"kill" takes at most 2 arguments; usage: cellbox-runc kill ID [SIGNAL]')
    rt.kill(pos[0], pos[1] if len(pos) > 1 else "SIGTERM", all=bool(o["all"]))
    return 0


def cmd_delete(rt: Any, o: dict[str, Any], pos: list[str], log: Log) -> int:
    _need(pos, 1, "delete", "ID")
    rt.delete(pos[0], force=bool(o["force"]), warn=log.warning)
    return 0


def _exec_process(rt: Any, cid: str, o: dict[str, Any], args: list[str]) -> dict[str, Any]:
    """--process FILE, or the container's own process with runc exec's overrides."""
    if o["process"]:
        import json

        try:
            with open(o["process"]) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"cannot read process file {o['process']}: {e}") from None
    if not args:
        raise InvalidArgument("exec: a command is required (or --process FILE)")
    d, _ = rt.load(cid)
    base = dict(rt._config(d).get("process") or {})
    proc: dict[str, Any] = {**base, "args": args, "terminal": bool(o["tty"])}
    env = list(base.get("env") or [])
    for e in o["env"]:
        if "=" not in e:
            raise InvalidArgument(f"exec: --env wants KEY=VALUE, got {e!r}")
        key = e.split("=", 1)[0]
        env = [x for x in env if x.split("=", 1)[0] != key] + [e]
    proc["env"] = env
    if o["cwd"]:
        proc["cwd"] = o["cwd"]
    if o["user"]:
        uid, _, gid = o["user"].partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise InvalidArgument(f"exec: --user wants UID[:GID], got {o['user']!r}")
        proc["user"] = {**(base.get("user") or {}), "uid": int(uid), "gid": int(gid or 0)}
    if o["gids"]:
        proc.setdefault("user", {})["additionalGids"] = [int(g) for g in o["gids"]]
    if o["caps"]:
        caps = {k: list(v) for k, v in (base.get("capabilities") or {}).items()}
        for c in o["caps"]:
            for kind in ("bounding", "effective", "permitted"):
                if c not in caps.setdefault(kind, []):
                    caps[kind].append(c)
        proc["capabilities"] = caps
    if o["no_new_privs"]:
        proc["noNewPrivileges"] = True
    return proc


def cmd_exec(rt: Any, o: dict[str, Any], pos: list[str], log: Log) -> int:
    _need(pos, 1, "exec", "ID [COMMAND [ARG...]]", exact=False)
    cid, args = pos[0], pos[1:]
    proc = _exec_process(rt, cid, o, args)
    pid, helper = rt.exec(
        cid, proc, console_socket=o["console_socket"], detach=bool(o["detach"]), pid_file=o["pid_file"]
    )
    log.debug(f"exec in {cid}: pid {pid}")
    if o["detach"]:
        return 0

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, forward)
    _, status = os.waitpid(helper, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def cmd_spec(rt: Any, o: dict[str, Any], pos: list[str], log: Log) -> int:
    """Write BUNDLE/config.json like `runc spec` (refuses to overwrite)."""
    from .. import spec as spec_mod
    from ..state import write_json

    if pos:
        raise InvalidArgument('"spec" takes no arguments')
    bundle = o["bundle"] or "."
    if not os.path.isdir(bundle):
        raise InvalidArgument(f"bundle {bundle} is not a directory")
    path = os.path.join(bundle, "config.json")
    if os.path.lexists(path):
        raise InvalidArgument("File config.json exists. Remove it first")
    config = spec_mod.default_spec()
    spec_mod.validate(config)
    write_json(path, config)
    return 0


def cmd_features(rt: Any, o: dict[str, Any], pos: list[str], log: Log) -> int:
    from .features import features

    _print_json(features())
    return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def cmd_ps(rt: Any, o: dict[str, Any], pos: list[str], log: Log) -> int:
    _need(pos, 1, "ps", "ID", exact=False)
    pids = rt.pids(pos[0])
    fmt = o["format"] or "table"
    if fmt == "json":
        _print_json(pids)
    elif fmt == "table":
        print(f"{'PID':>8}  CMD")
        for p in pids:
            print(f"{p:>8}  {_cmdline(p)}")
    else:
        raise InvalidArgument(f"invalid format option {fmt!r}")
    return 0


def cmd_list(rt: Any, o: dict[str, Any], pos: list[str], log: Log) -> int:
    items = rt.list()
    fmt = o["format"] or "table"
    if o["quiet"]:
        for s in items:
            print(s["id"])
    elif fmt == "json":
        _print_json(items)
    elif fmt == "table":
        print(f"{'ID':<24} {'PID':>8} {'STATUS':<10} {'BUNDLE':<40} CREATED")
        for s in items:
            print(f"{s['id']:<24} {s['pid']:>8} {s['status']:<10} {s['bundle']:<40} {s['created']}")
    else:
        raise InvalidArgument(f"invalid format option {fmt!r}")
    return 0


def cmd_pause(rt: Any, o: dict[str, Any], pos: list[str], log: Log) -> int:
    _need(pos, 1, "pause", "ID")
    rt.pause(pos[0])
    return 0


def cmd_resume(rt: Any, o: dict[str, Any], pos: list[str], log: Log) -> int:
    _need(pos, 1, "resume", "ID")
    rt.resume(pos[0])
    return 0


HANDLERS: dict[str, Callable[..., int]] = {
    "create": cmd_create, "run": cmd_run, "start": cmd_start, "state": cmd_state,
    "kill": cmd_kill, "delete": cmd_delete, "exec": cmd_exec, "spec": cmd_spec,
    "features": cmd_features, "ps": cmd_ps, "list": cmd_list, "pause": cmd_pause,
    "resume": cmd_resume,
}  # fmt: skip

USAGE = """usage: cellbox-runc [--root DIR] [--log FILE] [--log-format text|json] [--debug] COMMAND [ARGS]

an OCI runtime (runtime-spec {oci}) with runc's command line

commands:
""" + "\n".join(f"  {name} {usage}" for name, (_o, usage) in _COMMANDS.items())


def main(argv: list[str] | None = None, warm_ok: bool = True) -> int:
    """Entry point; returns (and exits with) the status runc would.

    A foreground `run` is handed to a warm helper when one serves this --root (warm.py).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    log = Log()
    warnings: list[str] = []
    try:
        g, rest = parse_global(argv, warnings)
        if g["log_format"] not in (None, "text", "json"):
            raise InvalidArgument(f"invalid log-format: {g['log_format']}")
        log = Log(g["log"], g["log_format"] or "text", bool(g["debug"]))
        for w in warnings:
            log.warning(w)
        if g["version"]:
            from ..spec import OCI_VERSION

            print(f"cellbox-runc version {VERSION}\nspec: {OCI_VERSION}")
            return _exit(0)
        if g["help"] or not rest or rest[0] in ("help", "h"):
            from ..spec import OCI_VERSION

            print(USAGE.replace("{oci}", OCI_VERSION))
            return _exit(0 if g["help"] or rest else 1)
        cmd, args = rest[0], rest[1:]
        if cmd not in HANDLERS and cmd != "warm":
            raise InvalidArgument(f"No help topic for '{cmd}'")
        opts, _usage = _COMMANDS[cmd]
        o, pos = parse(args, opts, interspersed=cmd != "exec")
        log.debug(f"{cmd} {' '.join(args)}")
        if cmd == "warm":
            from .warm import serve

            return _exit(serve(g["root"] or DEFAULT_ROOT, lambda a: main(a, warm_ok=False)))
        if cmd == "run" and warm_ok and not o["detach"]:
            from .warm import try_run

            code = try_run(g["root"] or DEFAULT_ROOT, argv)
            if code is not None:
                return _exit(code)
        from .ops import Runtime

        code = HANDLERS[cmd](Runtime(g["root"] or DEFAULT_ROOT), o, pos, log)
        return _exit(code)
    except CellboxError as e:
        log.error(str(e))
        return _exit(1)
    except OSError as e:
        log.error(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
        return _exit(1)
    except KeyboardInterrupt:
        return _exit(130)
    except Exception as e:  # noqa: BLE001 - one line, not a traceback
        log.error(f"{type(e).__name__}: {e}")
        return _exit(1)


def _exit(code: int) -> int:
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
