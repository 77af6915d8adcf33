"""What the user sees: Docker-style usage lines, plain error lines, `stats` output."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys

import pytest
from cellbox.runtime.cli import containers
from cellbox.runtime.cli import main as cli_main


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize(
    ("path", "prog"),
    [
        (("run",), "cellbox run"),
        (("ps",), "cellbox ps"),
        (("pull",), "cellbox pull"),
        (("container", "prune"), "cellbox container prune"),
        (("snapshot", "ls"), "cellbox snapshot ls"),
        (("kernelspec", "install"), "cellbox kernelspec install"),
    ],
)
def test_subcommands_are_named_like_docker(path: tuple[str, ...], prog: str) -> None:
    assert _subparser(cli_main.build_parser(), *path).prog == prog


def test_run_usage_line() -> None:
    usage = _subparser(cli_main.build_parser(), "run").format_usage()
    assert usage == "Usage:  cellbox run [OPTIONS] IMAGE [COMMAND] [ARG...]\n"


def test_usage_error_names_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli_main.main(["stop"])
    assert e.value.code == 125
    err = capsys.readouterr().err
    assert "See 'cellbox stop --help'." in err
    assert "[OPTIONS] COMMAND stop" not in err


def test_missing_tool_is_one_line_naming_the_debian_package(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run_missing_nft(_a: argparse.Namespace) -> int:
        subprocess.run(["nft", "list", "tables"], executable="/nonexistent/cellbox-test/nft", check=False)
        return 0

    monkeypatch.setattr(containers, "cmd_ps", run_missing_nft)
    with pytest.raises(SystemExit) as e:
        cli_main.main(["ps"])
    assert e.value.code == 125
    err = capsys.readouterr().err
    assert err == "cellbox: nft: command not found (apt-get install nftables)\n"


@pytest.mark.parametrize(("tool", "package"), [("skopeo", "skopeo"), ("chromium", "chromium"), ("busybox", "busybox-static")])
def test_missing_tool_message(tool: str, package: str) -> None:
    e = FileNotFoundError(2, "No such file or directory", f"/usr/bin/{tool}")
    assert cli_main.missing_tool_message(e) == f"{tool}: command not found (apt-get install {package})"


def test_other_missing_file_is_one_plain_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def open_missing(_a: argparse.Namespace) -> int:
        open("/nonexistent/cellbox-test/image.tar", "rb")
        return 0

    monkeypatch.setattr(containers, "cmd_ps", open_missing)
    with pytest.raises(SystemExit) as e:
        cli_main.main(["ps"])
    assert e.value.code == 125
    assert capsys.readouterr().err == "cellbox: /nonexistent/cellbox-test/image.tar: no such file or directory\n"


def test_exec_failure_message_is_plain_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.execvpe reports a PATH search's last try as bytes; the user sees a path."""
    from cellbox.runtime import process

    def fail(*_a: object) -> None:
        raise FileNotFoundError(2, "No such file or directory", b"/bin/nosuchcmd")

    def die(code: int, msg: str) -> None:
        raise SystemExit((code, msg))

    monkeypatch.setattr(process, "_prepare_and_exec", fail)
    monkeypatch.setattr(process, "_die", die)
    with pytest.raises(SystemExit) as e:
        process.exec_process({"args": ["nosuchcmd"]}, {}, None)
    assert e.value.code == (127, "exec failed: /bin/nosuchcmd: no such file or directory")


def test_stats_row_shows_the_limit_in_binary_units() -> None:
    row = containers._stats_row(
        {"id": "a" * 64, "name": "web", "memory": {"usage": 3543040, "limit": 64 << 20}, "pids": {"current": 2}, "cpu_percent": 1.5}
    )
    assert row == ["a" * 12, "web", "1.50%", "3.379MiB / 64MiB", "5.28%", "2"]


def test_stats_row_without_a_limit_shows_the_host_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(containers, "_host_memory", lambda: 8 << 30)
    row = containers._stats_row({"id": "b" * 64, "name": "x", "memory": {"usage": 1 << 30, "limit": None}, "pids": {}})
    assert row[3:] == ["1GiB / 8GiB", "12.50%", "--"]


class _FakeEngine:
    def list(self) -> list[object]:
        return []

    def stats(self, ref: str) -> dict[str, object]:
        return {"id": ref * 12, "name": ref, "memory": {"usage": 1024, "limit": 2048}, "cpu": {}, "pids": {"current": 1}}


@pytest.mark.parametrize("tty", [False, True])
def test_stats_clears_the_screen_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch, tty: bool) -> None:
    out = io.StringIO()
    out.isatty = lambda: tty  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(containers, "engine", lambda _a: _FakeEngine())
    monkeypatch.setattr(containers.time, "sleep", lambda _s: None)
    calls = iter([None, KeyboardInterrupt()])

    def table(rows: list[list[str]], header: list[str]) -> None:
        out.write(" ".join(header) + "\n" + "\n".join(" ".join(r) for r in rows) + "\n")
        step = next(calls)
        if step is not None:
            raise step

    monkeypatch.setattr(containers, "table", table)
    args = argparse.Namespace(containers=["c"], format=None, no_stream=False)
    with pytest.raises(KeyboardInterrupt):
        containers.cmd_stats(args)
    text = out.getvalue()
    assert ("\x1b[2J" in text) is tty
    assert "1KiB / 2KiB" in text


def test_a_run_builds_only_its_command_and_help_lists_them_all() -> None:
    full = cli_main.build_parser()
    assert cli_main.build_parser(only="").format_help() == full.format_help()
    lazy = cli_main.build_parser(only="ps")
    assert _subparser(lazy, "ps").prog == "cellbox ps"
    assert not isinstance(_subparser(lazy, "run"), argparse.ArgumentParser)
    args = lazy.parse_args(["ps", "-a", "--no-trunc"])
    assert args.all and args.no_trunc and args.func is containers.cmd_ps


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        ([], ""),
        (["--help"], ""),
        (["-v"], ""),
        (["ps", "-a"], "ps"),
        (["--root", "/tmp/x", "-D", "inspect", "c"], "inspect"),
        (["--root=/tmp/x", "--cgroup-parent", "cg", "images"], "images"),
        (["-D", "--", "run", "img"], "run"),
    ],
)
def test_command_of(argv: list[str], command: str) -> None:
    assert cli_main.command_of(argv) == command
