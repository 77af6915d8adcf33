"""`cellbox`: Docker's command line habits over the engine."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from ..errors import CellboxError


class _Formatter(argparse.HelpFormatter):
    """Docker's help layout: `Usage:  cellbox run [OPTIONS] IMAGE [COMMAND] [ARG...]`."""

    def add_usage(self, usage: str | None, actions: Any, groups: Any, prefix: str | None = None) -> None:
        super().add_usage(usage, actions, groups, "Usage:  " if prefix is None else prefix)


class _Parser(argparse.ArgumentParser):
    """Docker's habits: `Usage:` lines, errors exit 125, subcommands named `cellbox run`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def add_subparsers(self, **kwargs: Any) -> Any:
        # argparse names a subcommand after its parent's whole usage line
        # ("cellbox [OPTIONS] COMMAND run"); Docker says "cellbox run".
        kwargs.setdefault("prog", self.prog)
        kwargs.setdefault("parser_class", _Parser)
        return super().add_subparsers(**kwargs)

    def error(self, message: str) -> NoReturn:  # Docker prints usage hints and exits 125
        sys.stderr.write(f"cellbox: {message}\nSee '{self.prog} --help'.\n")
        raise SystemExit(125)


# The Debian package of each external tool some command runs: a missing one is named in
# one line with what to install, never a traceback.
DEBIAN_PACKAGES = {
    "nft": "nftables",
    "skopeo": "skopeo",
    "chromium": "chromium",
    "busybox": "busybox-static",
    "zstd": "zstd",
    "tar": "tar",
    "unshare": "util-linux",
    "ldconfig": "libc-bin",
    "ip": "iproute2",
    "podman": "podman",
    "runc": "runc",
    "crun": "crun",
}


def missing_tool_message(e: FileNotFoundError) -> str | None:
    """'nft: command not found (apt-get install nftables)' when `e` is a known tool that
    is not installed; None for any other missing file."""
    if not isinstance(e.filename, (str, bytes)):
        return None
    tool = os.fsdecode(e.filename).rsplit("/", 1)[-1]
    pkg = DEBIAN_PACKAGES.get(tool)
    if pkg is None:
        return None
    return f"{tool}: command not found (apt-get install {pkg})"


def _not_found(e: FileNotFoundError) -> str:
    if e.filename is None:
        return e.strerror or str(e)
    return f"{os.fsdecode(e.filename)}: no such file or directory"


class _Unbuilt:
    """Stands in for the parser of a command this run does not use: it takes the
    command's definition (add_argument, set_defaults, add_subparsers...) and drops it."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def __getattr__(self, _name: str) -> Any:
        return self._drop

    def _drop(self, *_args: Any, **_kwargs: Any) -> _Unbuilt:
        return self


class _Commands(argparse._SubParsersAction):
    """The COMMAND list; with `only` set, just that command's parser is built.

    Every command is still listed in `--help` and accepted as a choice, but defining
    ~200 options in ~45 parsers costs 20-40 ms (argparse looks up translations with a
    stat per call), more than the rest of `cellbox --help`.
    """

    only: str | None = None

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if self.only is None or name == self.only:
            return super().add_parser(name, **kwargs)
        real, self._parser_class = self._parser_class, _Unbuilt
        try:
            return super().add_parser(name, **kwargs)  # listed, with its help, but unbuilt
        finally:
            self._parser_class = real


_VALUE_OPTIONS = ("--root", "--cgroup-parent")


def command_of(argv: list[str]) -> str:
    """The COMMAND word of a `cellbox` command line ("" when there is none)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return argv[i + 1] if i + 1 < len(argv) else ""
        if arg in _VALUE_OPTIONS:
            i += 2
            continue
        if not arg.startswith("-"):
            return arg
        i += 1
    return ""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `only`, the parser of that command alone (and the list of
    every command), which is all one run needs. Command modules import their heavy
    parts when a command runs, never here."""
    from . import containers, images, system, volume

    parser = _Parser(
        prog="cellbox",
        description="Run Jupyter notebooks and commands in isolated Linux containers.",
        usage="cellbox [OPTIONS] COMMAND",
    )
    parser.add_argument("--root", help="state directory (default $CELLBOX_ROOT or /var/lib/cellbox)")
    parser.add_argument("--cgroup-parent", help="parent cgroup for containers (default: cellbox)")
    parser.add_argument("-D", "--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--version", action="store_true", help="Print version information and quit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", action=_Commands)
    sub.only = only
    containers.register(sub)
    images.register(sub)
    system.register(sub)
    volume.register(sub)
    if not only or only not in sub.choices:  # a built-in command needs no plugin
        for register in plugins():
            register(sub)
    return parser


PLUGIN_GROUP = "cellbox.cli_plugins"


def plugins() -> list[Callable[[Any], None]]:
    """The `register(subparsers)` of each command installed in the entry-point group
    `cellbox.cli_plugins` (`cellbox lab` from cellbox.extension, `cellbox kernelspec`
    from cellbox.kernel): the runtime's CLI knows no Jupyter part by name, and runs
    without them. A plugin whose module cannot be imported (a dependency missing) is
    left out."""
    from importlib.metadata import entry_points

    out = []
    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: ep.name):
        try:
            out.append(ep.load())
        except ImportError:
            continue
    return out


def main(argv: list[str] | None = None) -> None:
    """Run one command; errors are one line on stderr and Docker's exit codes."""
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(only=command_of(argv))
    args = parser.parse_args(argv)
    if args.version:
        from .system import cmd_version

        raise SystemExit(cmd_version(args))
    if not getattr(args, "func", None):
        parser.print_help()
        raise SystemExit(0 if not argv else 125)
    try:
        code = args.func(args)
    except CellboxError as e:
        if args.debug:
            raise
        sys.stderr.write(f"cellbox: {e}\n")
        raise SystemExit(e.exit_code) from None
    except FileNotFoundError as e:
        if args.debug:
            raise
        sys.stderr.write(f"cellbox: {missing_tool_message(e) or _not_found(e)}\n")
        raise SystemExit(125) from None
    except PermissionError as e:
        if args.debug:
            raise
        why = "cellbox needs root" if os.geteuid() == 0 else "not yours: set CELLBOX_ROOT to a dir of your own"
        sys.stderr.write(f"cellbox: permission denied: {e.filename or e} ({why})\n")
        raise SystemExit(125) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:
        raise SystemExit(0) from None
    raise SystemExit(code or 0)


if __name__ == "__main__":
    main()
