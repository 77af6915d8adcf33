"""The CLI answers at once: building its parser loads none of the heavy libraries that
only some commands need (issue 10: `requests` alone cost ~200 ms on every command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = ("requests", "urllib3", "rich", "jupyter_client", "ipykernel", "jupyter_server", "zmq", "tornado", "traitlets")

# Checked in a fresh interpreter: the test process itself has imported half the world.
PROBE = """
import json, sys
import cellbox.runtime.cli.main as m
m.build_parser()
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(sys.argv[1])))
print(json.dumps({"heavy": heavy, "engine": "cellbox.runtime.engine" in sys.modules,
                  "tar": "tarfile" in sys.modules}))
"""


def _probe() -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(HEAVY)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_building_the_parser_imports_no_heavy_library() -> None:
    got = _probe()
    assert got["heavy"] == [], f"the CLI imports {got['heavy']} before any command runs"


def test_building_the_parser_does_not_load_the_engine_or_tar_code() -> None:
    got = _probe()
    assert not got["engine"], "cellbox --help imports the engine"
    assert not got["tar"], "cellbox --help imports tarfile"


def test_help_exits_0_and_prints_usage() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "cellbox.runtime.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Usage:  cellbox [OPTIONS] COMMAND")
    for command in ("run", "ps", "images", "pull", "inspect", "kernelspec"):
        assert f"\n    {command} " in res.stdout


def test_registry_commands_are_registered_without_the_registry_client() -> None:
    """pull/push/login/logout parse their arguments; the client loads only when one runs."""
    code = (
        "import sys\n"
        "import cellbox.runtime.cli.main as m\n"
        "a = m.build_parser().parse_args(['pull', '-q', 'localhost:5000/x:1'])\n"
        "assert a.ref == 'localhost:5000/x:1' and a.quiet\n"
        "assert 'cellbox.runtime.images.registry' not in sys.modules\n"
        "assert 'requests' not in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_registry_progress_into_a_pipe_does_not_load_rich() -> None:
    code = (
        "import sys\n"
        "from cellbox.runtime.images.registry.progress import Progress\n"
        "p = Progress('pull', 'x:1', None)\n"
        "p.add('sha256:' + 'a' * 64, 'layer', 10)\n"
        "p.close()\n"
        "assert 'rich' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
