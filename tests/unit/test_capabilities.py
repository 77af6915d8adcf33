"""Capability names, Docker's add/drop rules and the OCI capability sets (no privileges)."""

from __future__ import annotations

import pytest
from cellbox.runtime.errors import InvalidArgument
from cellbox.runtime.security import capabilities as caps


def test_all_caps_numbers() -> None:
    assert caps.ALL_CAPS["CAP_CHOWN"] == 0
    assert caps.ALL_CAPS["CAP_SYS_ADMIN"] == 21
    assert caps.ALL_CAPS["CAP_CHECKPOINT_RESTORE"] == 40
    assert sorted(caps.ALL_CAPS.values()) == list(range(41))


def test_last_cap_read_from_kernel() -> None:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        assert caps.LAST_CAP == int(f.read())
    assert len(caps.supported()) == min(caps.LAST_CAP, 40) + 1


def test_default_caps_are_podmans_eleven() -> None:
    assert len(caps.DEFAULT_CAPS) == 11
    assert {"CAP_NET_RAW", "CAP_MKNOD", "CAP_AUDIT_WRITE", "CAP_SYS_ADMIN"}.isdisjoint(
        caps.DEFAULT_CAPS
    )
    assert caps.to_mask(caps.DEFAULT_CAPS) == 0x800405FB


@pytest.mark.parametrize("name", ["net_admin", "CAP_NET_ADMIN", " Net_Admin ", "cap_net_admin"])
def test_normalize(name: str) -> None:
    assert caps.normalize(name) == "CAP_NET_ADMIN"


@pytest.mark.parametrize("name", ["CAP_FOO", "foo", "", "ALL"])
def test_normalize_unknown(name: str) -> None:
    with pytest.raises(InvalidArgument, match="unknown capability"):
        caps.normalize(name)


def test_resolve_nothing_changed_is_the_base_sorted() -> None:
    assert caps.resolve([], []) == sorted(caps.DEFAULT_CAPS, key=caps.ALL_CAPS.__getitem__)


def test_resolve_add_and_drop() -> None:
    got = caps.resolve(["net_raw", "CAP_SYS_PTRACE"], ["chown", "CAP_KILL"])
    assert "CAP_NET_RAW" in got and "CAP_SYS_PTRACE" in got
    assert "CAP_CHOWN" not in got and "CAP_KILL" not in got
    assert len(got) == 11
    assert got == sorted(got, key=caps.ALL_CAPS.__getitem__)


def test_resolve_drop_all_keeps_only_adds() -> None:
    assert caps.resolve(["net_bind_service"], ["ALL"]) == ["CAP_NET_BIND_SERVICE"]
    assert caps.resolve([], ["all"]) == []


def test_resolve_add_all_minus_drops() -> None:
    got = caps.resolve(["ALL"], ["sys_admin"])
    assert "CAP_SYS_ADMIN" not in got
    assert set(got) == set(caps.supported()) - {"CAP_SYS_ADMIN"}


def test_resolve_other_base() -> None:
    assert caps.resolve(["kill"], [], base=["CAP_CHOWN"]) == ["CAP_CHOWN", "CAP_KILL"]


def test_resolve_unknown_cap() -> None:
    with pytest.raises(InvalidArgument, match="unknown capability: CAP_NOPE"):
        caps.resolve(["CAP_NOPE"], [])
    with pytest.raises(InvalidArgument, match="unknown capability: bogus"):
        caps.resolve([], ["bogus"])


def test_oci_capabilities_root() -> None:
    spec = caps.oci_capabilities(["kill", "CAP_CHOWN"], 0)
    assert spec["bounding"] == spec["effective"] == spec["permitted"] == ["CAP_CHOWN", "CAP_KILL"]
    assert spec["inheritable"] == [] and spec["ambient"] == []


def test_oci_capabilities_non_root_keeps_only_bounding() -> None:
    spec = caps.oci_capabilities(caps.DEFAULT_CAPS, 1000)
    assert set(spec["bounding"]) == set(caps.DEFAULT_CAPS)
    assert spec["effective"] == spec["permitted"] == spec["inheritable"] == spec["ambient"] == []


def test_masks_round_trip() -> None:
    assert caps.from_mask(caps.to_mask(caps.DEFAULT_CAPS)) == caps.resolve([], [])
    assert caps.from_mask(1 << 50) == ["CAP_50"]


def test_parse_status() -> None:
    text = (
        "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t00000000800405fb\n"
        "CapEff:\t0000000000000001\nCapBnd:\t00000000800405fb\nCapAmb:\t0000000000000020\n"
    )
    got = caps.parse_status(text)
    assert got["effective"] == ["CAP_CHOWN"]
    assert got["ambient"] == ["CAP_KILL"]
    assert got["inheritable"] == []
    assert set(got["bounding"]) == set(caps.DEFAULT_CAPS)


def test_current_reads_own_status() -> None:
    got = caps.current()
    assert set(got) == {"bounding", "effective", "permitted", "inheritable", "ambient"}
    assert set(got["effective"]) <= set(got["permitted"])


def test_apply_rejects_unknown_set_before_touching_anything() -> None:
    before = caps.current()
    with pytest.raises(InvalidArgument, match="unknown capability set: bogus"):
        caps.apply({"bogus": []})
    with pytest.raises(InvalidArgument, match="unknown capability"):
        caps.apply({"bounding": ["CAP_NOPE"]})
    assert caps.current() == before
