"""runtime/oci/fields: every config.md property honoured, refused by name, or (unknown to
the spec) only warned about (config.md "Extensibility": runtimes MUST ignore unknown
properties and not generate errors for them)."""

from __future__ import annotations

import re

import pytest
from cellbox.runtime import spec as spec_mod
from cellbox.runtime.errors import InvalidArgument
from cellbox.runtime.oci import fields


def _config(**changes: object) -> dict:
    cfg = spec_mod.default_spec(["/bin/true"])
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        d = cfg
        for key in path:
            d = d.setdefault(key, {})
        d[last] = value
    return cfg


def test_runc_spec_config_is_accepted_without_warnings() -> None:
    assert fields.check(_config()) == []


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"process__scheduler": {"policy": "SCHED_FIFO"}}, "process.scheduler"),
        ({"process__ioPriority": {"class": "IOPRIO_CLASS_RT"}}, "process.ioPriority"),
        ({"process__apparmorProfile": "docker-default"}, "process.apparmorProfile"),
        ({"process__user__username": "bob"}, "process.user.username"),
        ({"domainname": "example.org"}, "domainname"),
        ({"linux__intelRdt": {"closID": "x"}}, "linux.intelRdt"),
        ({"linux__timeOffsets": {"monotonic": {"secs": 1}}}, "linux.timeOffsets"),
        (
            {"linux__seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/x"}},
            "linux.seccomp.listenerPath",
        ),
        ({"linux__personality": {"domain": "LINUX32"}}, "linux.personality"),
        ({"windows": {"layerFolders": []}}, "windows"),
        (
            {"hooks": {"prestart": [{"path": "/bin/true", "timeout": 0}]}},
            "hooks.prestart[0].timeout",
        ),
        (
            {"hooks": {"poststop": [{"path": "/bin/true", "timeout": 1.5}]}},
            "hooks.poststop[0].timeout",
        ),
    ],
)
def test_a_field_cellbox_runc_does_not_apply_is_refused_by_name(changes: dict, named: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(named)):
        fields.check(_config(**changes))


def test_hostname_without_a_uts_namespace_is_refused() -> None:
    cfg = _config()
    cfg["linux"]["namespaces"] = [n for n in cfg["linux"]["namespaces"] if n["type"] != "uts"]
    with pytest.raises(InvalidArgument, match="hostname needs a uts namespace"):
        fields.check(cfg)
    del cfg["hostname"]
    assert fields.check(cfg) == []


def test_empty_values_and_the_default_personality_are_fine() -> None:
    cfg = _config(
        process__apparmorProfile="", linux__mountLabel="", linux__personality={"domain": "LINUX"}
    )
    assert fields.check(cfg) == []


def test_unknown_properties_are_warned_about_not_refused() -> None:
    cfg = _config(org_example="x", process__fancy=1)
    cfg["mounts"][0]["x-extra"] = True
    warnings = fields.check(cfg)
    assert sorted(warnings) == sorted(
        f"ignoring unknown property {n}"
        for n in ("org_example", "process.fancy", "mounts[0].x-extra")
    )


def test_a_bind_option_that_would_be_dropped_is_refused() -> None:
    cfg = _config()
    cfg["mounts"].append(
        {"destination": "/data", "type": "bind", "source": "/tmp", "options": ["rbind", "rro"]}
    )
    with pytest.raises(InvalidArgument, match=r"mounts\[7\]\.options: 'rro'"):
        fields.check(cfg)
    cfg["mounts"][-1]["options"] = ["rbind", "ro", "nosuid", "rprivate"]
    assert fields.check(cfg) == []
