"""One Limits value (issue 12): every shape a limit arrives in, every refusal, each worded in
the names its reader wrote: RunOptions fields (the engine), flags (the CLI), c.Cellbox traits
(the server's config), metadata.cellbox keys (a notebook), the kernelspec's keys."""

from __future__ import annotations

import argparse
import dataclasses
import os
from types import SimpleNamespace

import pytest
from cellbox.extension.config import Cellbox
from cellbox.extension.manager import ContainerManager
from cellbox.kernel import kernelspec
from cellbox.kernel.provisioner import CellboxProvisioner
from cellbox.runtime import cgroups, limits
from cellbox.runtime.cgroups.resources import normalize
from cellbox.runtime.cli import main as cli_main
from cellbox.runtime.cli.containers import _options
from cellbox.runtime.engine import Limits, RunOptions
from cellbox.runtime.errors import InvalidArgument

MiB, GiB = 1 << 20, 1 << 30
NCPU = os.cpu_count() or 1


# -- shapes ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, Limits()),
        (
            {"memory": None, "cpus": None, "ulimits": None, "storage_opts": None},
            Limits(),
        ),  # None: unset
        ({"memory": "256m"}, Limits(memory=256 * MiB)),
        ({"memory": 256 * MiB}, Limits(memory=256 * MiB)),
        ({"memory": "1.5g"}, Limits(memory=int(1.5 * GiB))),
        ({"memory": " 1 GiB "}, Limits(memory=GiB)),
        ({"memory": "6291456"}, Limits(memory=6 * MiB)),  # the least
        ({"memory": "1g", "memory_swap": "2g"}, Limits(memory=GiB, memory_swap=2 * GiB)),
        ({"memory": "1g", "memory_swap": GiB}, Limits(memory=GiB, memory_swap=GiB)),  # swap off
        ({"memory": "1g", "memory_swap": "-1"}, Limits(memory=GiB, memory_swap=-1)),
        ({"memory_swap": -1}, Limits(memory_swap=-1)),  # unlimited swap needs no memory limit
        ({"cpus": 1}, Limits(cpus=1.0)),
        ({"cpus": 0.5}, Limits(cpus=0.5)),
        ({"cpus": 0.01}, Limits(cpus=0.01)),
        ({"cpu_shares": 2}, Limits(cpu_shares=2)),
        ({"cpu_shares": 262144}, Limits(cpu_shares=262144)),
        ({"pids_limit": 100}, Limits(pids_limit=100)),
        ({"pids_limit": -1}, Limits(pids_limit=-1)),
        ({"ulimits": ["nofile=1024"]}, Limits(ulimits=(("RLIMIT_NOFILE", 1024, 1024),))),
        (
            {"ulimits": ["nproc=10:20", "nofile=512:2048"]},
            Limits(ulimits=(("RLIMIT_NOFILE", 512, 2048), ("RLIMIT_NPROC", 10, 20))),
        ),
        (
            {"ulimits": ["core=-1"]},
            Limits(ulimits=(("RLIMIT_CORE", limits.UNLIMITED, limits.UNLIMITED),)),
        ),
        ({"storage_opts": ["size=10G"]}, Limits(disk=10 * GiB)),
        ({"storage_opts": ["size=16m"]}, Limits(disk=16 * MiB)),
        ({"disk": "10g"}, Limits(disk=10 * GiB)),
        ({"disk": 16 * MiB}, Limits(disk=16 * MiB)),
    ],
)
def test_every_shape_parses_to_one_value(values, expected):
    assert Limits.parse(values) == expected


def test_a_limit_is_a_value():
    a, b = (
        Limits.parse({"memory": "1g", "ulimits": ["nofile=64"]}),
        Limits(memory=GiB, ulimits=(("RLIMIT_NOFILE", 64, 64),)),
    )
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.memory = 1  # type: ignore[misc]


def test_an_edge_hands_the_engine_what_it_parsed():
    """options() are RunOptions fields; the engine's own parse of them gives the same value."""
    lim = Limits.parse({
        "memory": "512m", "memory_swap": "-1", "cpus": 0.5, "cpu_shares": 512, "pids_limit": 64,
        "ulimits": ["nofile=100:200", "core=-1"], "storage_opts": ["size=1g"],
    })  # fmt: skip
    opts = RunOptions(rootfs="/", command=["true"], **lim.options())
    assert (
        opts.memory == 512 * MiB and opts.memory_swap == -1 and opts.storage_opts == [f"size={GiB}"]
    )
    assert opts.ulimits == ["core=-1:-1", "nofile=100:200"]
    assert Limits.from_options(opts) == lim
    assert Limits.parse(Limits().options()) == Limits()


# -- refusals in the engine's words: RunOptions' field names -------------------------------
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"memory": "lots"}, "memory = 'lots': invalid memory size (e.g. 512m, 10g)"),
        ({"memory": ""}, "memory = '': invalid memory size (e.g. 512m, 10g)"),
        ({"memory": "-1"}, "memory = '-1': invalid memory size (e.g. 512m, 10g)"),
        (
            {"memory": "99999999999p"},
            "memory = '99999999999p': invalid memory size (e.g. 512m, 10g)",
        ),
        ({"memory": True}, "memory = True: invalid memory size (bytes, or text like 512m)"),
        (
            {"memory": 1.5e9},
            "memory = 1500000000.0: invalid memory size (bytes, or text like 512m)",
        ),
        ({"memory": 2**63}, f"memory = {2**63}: invalid memory size (too large)"),
        ({"memory": "1k"}, "memory = '1k': minimum memory limit allowed is 6MB"),
        ({"memory": -1}, "memory = -1: minimum memory limit allowed is 6MB"),
        ({"memory_swap": "1g"}, "memory_swap = '1g': needs a memory"),
        (
            {"memory": "200m", "memory_swap": "100m"},
            "memory_swap = '100m': must be >= memory (200m): it is memory plus swap",
        ),
        (
            {"memory": "200m", "memory_swap": 0},
            "memory_swap = 0: must be >= memory (200m): it is memory plus swap",
        ),
        ({"cpus": 0}, "cpus = 0: must be positive"),
        ({"cpus": -1.5}, "cpus = -1.5: must be positive"),
        ({"cpus": 0.001}, "cpus = 0.001: the least is 0.01"),
        ({"cpus": float("nan")}, "cpus = nan: must be a number of CPUs"),
        ({"cpus": "1"}, "cpus = '1': must be a number of CPUs"),
        ({"cpus": True}, "cpus = True: must be a number of CPUs"),
        ({"cpus": NCPU + 1}, f"cpus = {NCPU + 1}: only {NCPU} CPUs available"),
        ({"cpu_shares": 1}, "cpu_shares = 1: must be an integer from 2 to 262144"),
        ({"cpu_shares": 262145}, "cpu_shares = 262145: must be an integer from 2 to 262144"),
        ({"cpu_shares": "512"}, "cpu_shares = '512': must be an integer from 2 to 262144"),
        ({"pids_limit": 0}, "pids_limit = 0: must be a positive integer, or -1 for no limit"),
        ({"pids_limit": -2}, "pids_limit = -2: must be a positive integer, or -1 for no limit"),
        ({"pids_limit": 1.5}, "pids_limit = 1.5: must be a positive integer, or -1 for no limit"),
        ({"pids_limit": True}, "pids_limit = True: must be a positive integer, or -1 for no limit"),
        (
            {"ulimits": ["nofile"]},
            "invalid ulimit 'nofile': want NAME=SOFT[:HARD], e.g. nofile=1024:2048",
        ),
        (
            {"ulimits": ["nosuch=1"]},
            "invalid ulimit 'nosuch=1': want NAME=SOFT[:HARD], e.g. nofile=1024:2048",
        ),
        ({"ulimits": ["nofile=x"]}, "invalid ulimit 'nofile=x': limits are numbers"),
        (
            {"ulimits": ["nofile=10:5"]},
            "invalid ulimit 'nofile=10:5': soft limit must be between 0 and the hard limit",
        ),
        (
            {"ulimits": ["nofile=-5"]},
            "invalid ulimit 'nofile=-5': soft limit must be between 0 and the hard limit",
        ),
        (
            {"storage_opts": ["quota=1g"]},
            "invalid storage option 'quota=1g': only size=SIZE (e.g. size=10G) is supported",
        ),
        (
            {"storage_opts": ["size"]},
            "invalid storage option 'size': only size=SIZE (e.g. size=10G) is supported",
        ),
        ({"storage_opts": ["size=1k"]}, "storage_opts = 'size=1k': at least 16m"),
        (
            {"storage_opts": ["size=lots"]},
            "storage_opts = 'size=lots': invalid disk size (e.g. 512m, 10g)",
        ),
        ({"disk": "1k"}, "disk = '1k': at least 16m"),
    ],
)
def test_refusals_name_the_engines_fields(values, message):
    with pytest.raises(InvalidArgument) as e:
        Limits.parse(values)
    assert str(e.value) == message


def test_what_the_host_cannot_give_is_checked_only_when_asked():
    assert (
        Limits.parse({"cpus": NCPU + 1}, host=False).cpus == NCPU + 1
    )  # a cap, checked when granted


def test_a_programming_slip_is_no_user_error():
    with pytest.raises(TypeError, match="unknown limits: mem"):
        Limits.parse({"mem": "1g"})
    with pytest.raises(TypeError, match="one limit"):
        Limits.parse({"disk": "1g", "storage_opts": ["size=1g"]})


# -- the CLI: flags as typed ---------------------------------------------------------------
def cli_options(*argv: str) -> RunOptions:
    return _options(cli_main.build_parser().parse_args(["run", *argv, "--rootfs", "/", "true"]))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--memory", "1k"], "--memory 1k: minimum memory limit allowed is 6MB"),
        (["-m", "lots"], "--memory lots: invalid memory size (e.g. 512m, 10g)"),
        (["--memory-swap", "1g"], "--memory-swap 1g: needs a --memory"),
        (
            ["-m", "200m", "--memory-swap", "100m"],
            "--memory-swap 100m: must be >= --memory (200m): it is memory plus swap",
        ),
        (["--cpus", "0"], "--cpus 0.0: must be positive"),
        (["--cpus", str(NCPU + 1)], f"--cpus {NCPU + 1}.0: only {NCPU} CPUs available"),
        (["--cpu-shares", "1"], "--cpu-shares 1: must be an integer from 2 to 262144"),
        (["--pids-limit", "0"], "--pids-limit 0: must be a positive integer, or -1 for no limit"),
        (["--ulimit", "nofile=x"], "invalid ulimit 'nofile=x': limits are numbers"),
        (["--storage-opt", "size=1k"], "--storage-opt size=1k: at least 16m"),
        (
            ["--storage-opt", "size=lots"],
            "--storage-opt size=lots: invalid disk size (e.g. 512m, 10g)",
        ),
    ],
)
def test_the_cli_refuses_in_the_flags_typed(argv, message):
    with pytest.raises(InvalidArgument) as e:
        cli_options(*argv)
    assert str(e.value) == message


def test_the_cli_hands_the_engine_parsed_limits():
    opts = cli_options(
        "-m", "256m", "--memory-swap", "-1", "--cpus", "1", "-c", "512", "--pids-limit", "100",
        "--ulimit", "nofile=100:200", "--storage-opt", "size=40m",
    )  # fmt: skip
    assert (opts.memory, opts.memory_swap, opts.cpus, opts.cpu_shares, opts.pids_limit) == (
        256 * MiB,
        -1,
        1.0,
        512,
        100,
    )
    assert opts.ulimits == ["nofile=100:200"] and opts.storage_opts == [f"size={40 * MiB}"]
    assert Limits.from_options(opts) == Limits(
        256 * MiB, -1, 1.0, 512, 100, (("RLIMIT_NOFILE", 100, 200),), 40 * MiB
    )
    none = cli_options()
    assert (none.memory, none.cpus, none.pids_limit, none.ulimits, none.storage_opts) == (
        None,
        None,
        None,
        [],
        [],
    )


# -- the server's config and a notebook's metadata ----------------------------------------
def manager(tmp_path, **config) -> ContainerManager:
    cfg = Cellbox(**{"max_memory": "512m", "max_cpus": 1.0, "max_pids": 300, **config})
    return ContainerManager(cfg, None, engine=SimpleNamespace(root=tmp_path))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "meta", "message"),
    [
        (
            {},
            {"memory": "lots"},
            "metadata.cellbox.memory = 'lots': invalid memory size (e.g. 512m, 10g)",
        ),
        (
            {},
            {"memory": "1m"},
            "metadata.cellbox.memory = '1m': minimum memory limit allowed is 6MB",
        ),
        ({}, {"memory": None}, "metadata.cellbox.memory must not be null"),
        ({}, {"cpus": -1}, "metadata.cellbox.cpus = -1: must be positive"),
        ({}, {"cpus": "2"}, "metadata.cellbox.cpus = '2': must be a number of CPUs"),
        (
            {},
            {"pids_limit": -1},
            "metadata.cellbox.pids_limit must be an integer >= 1",
        ),  # always bounded
        ({}, {"pids_limit": 0}, "metadata.cellbox.pids_limit must be an integer >= 1"),
        ({}, {"pids_limit": "5"}, "metadata.cellbox.pids_limit must be an integer >= 1"),
        (
            {"memory_limit": "lots"},
            {},
            "c.Cellbox.memory_limit = 'lots': invalid memory size (e.g. 512m, 10g)",
        ),
        (
            {"memory_limit": "lots"},
            {"memory": "1g"},
            None,
        ),  # the notebook's own is used, not the default
        (
            {"max_memory": "1k"},
            {},
            "c.Cellbox.max_memory = '1k': minimum memory limit allowed is 6MB",
        ),
        ({"cpu_limit": -1.0}, {}, "c.Cellbox.cpu_limit = -1.0: must be positive"),
        ({"max_cpus": -1.0}, {}, "c.Cellbox.max_cpus = -1.0: must be positive"),
        ({"pids_limit": 0}, {}, "c.Cellbox.pids_limit must be an integer >= 1"),
        ({"disk_limit": "1k"}, {}, "c.Cellbox.disk_limit = '1k': at least 16m"),
    ],
)
def test_the_server_refuses_in_the_names_its_admin_or_notebook_wrote(
    tmp_path, config, meta, message
):
    m = manager(tmp_path, **config)
    if message is None:
        m.settings(meta)
        return
    with pytest.raises(InvalidArgument) as e:
        m.settings(meta)
    assert str(e.value) == message


def test_a_notebook_asks_and_the_config_caps(tmp_path):
    m = manager(tmp_path)
    opts, capped = m.settings({"memory": "64g", "cpus": 16, "pids_limit": 99999})
    assert (opts["memory"], opts["cpus"], opts["pids_limit"], opts["disk"]) == (
        512 * MiB,
        1.0,
        300,
        10 * GiB,
    )
    assert capped == {
        "memory": {"asked": 64 * GiB, "granted": 512 * MiB},
        "cpus": {"asked": 16, "granted": 1.0},
        "pids_limit": {"asked": 99999, "granted": 300},
    }
    opts, capped = m.settings({"memory": 128 * MiB, "cpus": 0.5, "pids_limit": 50})
    assert (opts["memory"], opts["cpus"], opts["pids_limit"], capped) == (128 * MiB, 0.5, 50, {})
    opts, capped = m.settings({"cpus": 0})  # 0: as many as allowed
    assert opts["cpus"] == 1.0 and capped["cpus"] == {"asked": 0, "granted": 1.0}
    uncapped = manager(tmp_path, max_cpus=0.0, disk_limit="")
    opts, _ = uncapped.settings({"cpus": 0})
    assert opts["cpus"] is None and opts["disk"] is None


def test_a_snapshot_quota_is_a_size_in_the_same_words():
    assert Limits.size("5g", "c.Cellbox.snapshot_quota") == 5 * GiB
    with pytest.raises(InvalidArgument) as e:
        Limits.size("lots", "c.Cellbox.snapshot_quota")
    assert str(e.value) == "c.Cellbox.snapshot_quota = 'lots': invalid disk size (e.g. 512m, 10g)"


# -- the kernelspec ------------------------------------------------------------------------
def test_kernelspec_install_refuses_in_its_flags_and_writes_nothing(tmp_path):
    args = argparse.Namespace(
        name="cellbox", prefix=str(tmp_path), user=False, display_name=None, image=None,
        memory="lots", cpus=None, network=None, pids_limit=None, shutdown=None,
    )  # fmt: skip
    with pytest.raises(InvalidArgument) as e:
        kernelspec.cmd_install(args)
    assert str(e.value) == "--memory lots: invalid memory size (e.g. 512m, 10g)"
    assert not any(tmp_path.rglob("kernel.json"))
    with pytest.raises(InvalidArgument) as e:
        kernelspec.kernel_json(pids_limit=-3)
    assert str(e.value) == "pids_limit = -3: must be a positive integer, or -1 for no limit"
    config = kernelspec.kernel_json(memory="1g", cpus=1.5, pids_limit=10)["metadata"][
        "kernel_provisioner"
    ]["config"]
    assert config == {
        "memory": "1g",
        "cpus": 1.5,
        "pids_limit": 10,
    }  # written as given: a file people read


@pytest.mark.parametrize(
    ("trait", "value", "message"),
    [
        (
            "memory",
            "lots",
            "kernel_provisioner.config.memory = 'lots': invalid memory size (e.g. 512m, 10g)",
        ),
        ("cpus", -1.0, "kernel_provisioner.config.cpus = -1.0: must be positive"),
        (
            "pids_limit",
            -7,
            "kernel_provisioner.config.pids_limit = -7: must be a positive integer, or -1 for no limit",
        ),
    ],
)
def test_the_provisioner_refuses_in_the_kernelspecs_words_before_any_container(
    trait, value, message
):
    p = CellboxProvisioner(kernel_id="k", kernel_spec=None, parent=None)
    setattr(p, trait, value)
    p._engine = SimpleNamespace()  # never reached: nothing is made
    with pytest.raises(InvalidArgument) as e:
        p._get_container({})
    assert str(e.value) == message


# -- the OCI layer shares the size grammar and the swap rule --------------------------------
def test_the_oci_check_shares_the_rules_in_its_own_names():
    assert cgroups.parse_memory is limits.parse_memory
    assert normalize({"memory": {"limit": "256m", "swap": 512 * MiB}}).memory.swap == 512 * MiB
    for res, message in (
        (
            {"memory": {"limit": 100, "swap": 50}},
            "memory.swap = 50: must be >= memory.limit (100): it is memory plus swap",
        ),
        ({"memory": {"swap": 1}}, "memory.swap = 1: needs a memory.limit"),
        ({"memory": {"limit": -1, "swap": 1}}, "memory.swap = 1: needs a memory.limit"),
        (
            {"memory": {"limit": "lots"}},
            "memory.limit = 'lots': invalid memory size (e.g. 512m, 10g)",
        ),
    ):
        with pytest.raises(InvalidArgument) as e:
            normalize(res)
        assert str(e.value) == message
