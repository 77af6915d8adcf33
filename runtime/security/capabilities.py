"""Which Linux capabilities a container gets, and dropping to them in the init.

Defaults follow podman (SECURITY-CHECKLIST item 1): 11 capabilities for root, none
effective for other users, an empty inheritable and ambient set (moby dropped the
inheritable set for CVE-2022-24769). The add/drop rules are Docker's.

Order in the container init (runc does the same):

    keep_caps()                 # PR_SET_KEEPCAPS=1, so a setuid away from 0 keeps `permitted`
    os.setgroups(...); os.setgid(gid); os.setuid(uid)
    apply(spec["process"]["capabilities"])   # bounding drop, capset, ambient; KEEPCAPS off

apply() first re-raises the kept permitted set into `effective` (setuid cleared it),
because dropping from the bounding set needs CAP_SETPCAP.
"""

from __future__ import annotations

from cellbox.runtime.errors import InvalidArgument
from cellbox.runtime.linux import capabilities as lc

_NAMES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
    "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
    "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
    "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
    "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
]  # fmt: skip

ALL_CAPS: dict[str, int] = {f"CAP_{name}": nr for nr, name in enumerate(_NAMES)}
_BY_NUMBER = {nr: name for name, nr in ALL_CAPS.items()}

DEFAULT_CAPS: list[str] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
]

_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")


def _read_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return max(ALL_CAPS.values())


# Read once at import (before pivot_root hides the host's /proc).
LAST_CAP: int = _read_last_cap()


def normalize(name: str) -> str:
    """'net_admin' or 'CAP_NET_ADMIN' -> 'CAP_NET_ADMIN'."""
    upper = name.strip().upper()
    full = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if full not in ALL_CAPS:
        raise InvalidArgument(f"unknown capability: {name}")
    return full


def _sorted(caps: set[str]) -> list[str]:
    return sorted(caps, key=ALL_CAPS.__getitem__)


def _normalize_list(names: list[str]) -> set[str]:
    return {"ALL" if n.strip().upper() in ("ALL", "CAP_ALL") else normalize(n) for n in names}


def supported() -> list[str]:
    """The capability names this kernel knows (up to cap_last_cap)."""
    return [name for name, nr in ALL_CAPS.items() if nr <= LAST_CAP]


def resolve(cap_add: list[str], cap_drop: list[str], base: list[str] = DEFAULT_CAPS) -> list[str]:
    """Docker's --cap-add/--cap-drop rules (moby TweakCapabilities), sorted by number.

    ALL in cap_add: everything the kernel supports except cap_drop; ALL in cap_drop:
    only cap_add; otherwise base minus cap_drop plus cap_add.
    """
    adds = _normalize_list(cap_add)
    drops = _normalize_list(cap_drop)
    if "ALL" in adds:
        return _sorted(set(supported()) - drops)
    if "ALL" in drops:
        return _sorted(adds)
    return _sorted(({normalize(c) for c in base} - drops) | adds)


def oci_capabilities(caps: list[str], uid: int) -> dict:
    """OCI process.capabilities for caps; a non-root uid keeps only the bounding set (podman)."""
    names = _sorted({normalize(c) for c in caps})
    active = names if uid == 0 else []
    return {
        "bounding": list(names),
        "effective": list(active),
        "permitted": list(active),
        "inheritable": [],
        "ambient": [],
    }


def to_mask(caps: list[str]) -> int:
    """Bit mask of capability names (bit N = capability N)."""
    mask = 0
    for c in caps:
        mask |= 1 << ALL_CAPS[normalize(c)]
    return mask


def from_mask(mask: int) -> list[str]:
    """Names of the bits set in mask; unknown bits become 'CAP_<n>'."""
    return [_BY_NUMBER.get(nr, f"CAP_{nr}") for nr in range(64) if mask >> nr & 1]


def keep_caps() -> None:
    """Call before setuid away from 0 so apply() can still drop the bounding set."""
    lc.set_keepcaps(True)


def apply(capabilities: dict) -> None:
    """Drop the calling process to an OCI process.capabilities dict.

    Runs in the single-threaded init after the uid/gid change (see module doc).
    """
    for key in capabilities:
        if key not in _SETS:
            raise InvalidArgument(f"unknown capability set: {key}")
    want = {key: to_mask(capabilities.get(key) or []) for key in _SETS}
    _eff, prm, inh = lc.capget()
    # setuid(non-zero) clears `effective`; raise what is still permitted to get CAP_SETPCAP.
    try:
        lc.capset(prm, prm, inh)
    except OSError as e:
        raise InvalidArgument(f"cannot raise permitted capabilities: {e.strerror}") from e
    for nr in range(LAST_CAP + 1):
        if not want["bounding"] >> nr & 1 and lc.bounding_has(nr):
            try:
                lc.bounding_drop(nr)
            except OSError as e:
                raise InvalidArgument(
                    f"cannot drop {_BY_NUMBER.get(nr, nr)} from the bounding set: {e.strerror}"
                    " (CAP_SETPCAP missing; call keep_caps() before setuid)"
                ) from e
    try:
        lc.capset(want["effective"], want["permitted"], want["inheritable"])
    except OSError as e:
        raise InvalidArgument(
            f"cannot set capabilities {from_mask(want['permitted'] & ~prm) or ''}: {e.strerror}"
        ) from e
    lc.ambient_clear_all()
    # The kernel keeps an ambient capability only while it is permitted and inheritable;
    # runc and crun skip the others (`runc spec` lists ambient ones without inheritable).
    for nr in range(LAST_CAP + 1):
        if (want["ambient"] & want["permitted"] & want["inheritable"]) >> nr & 1:
            try:
                lc.ambient_raise(nr)
            except OSError as e:
                raise InvalidArgument(f"cannot raise ambient {_BY_NUMBER[nr]}: {e.strerror}") from e
    lc.set_keepcaps(False)


def check_bounding(capabilities: dict | None) -> None:
    """Refuse, before the container exists, a capability the runtime itself cannot grant.

    capset(2) allows effective, permitted and inheritable only within the bounding set
    of the caller; runc and crun fail `create` with EPERM there, so does this (rather
    than a process that dies with 126 after `start`). Names missing from `bounding`
    only are fine (there is nothing to drop).
    """
    for kind in ("effective", "permitted", "inheritable"):
        for name in (capabilities or {}).get(kind) or []:
            nr = ALL_CAPS[normalize(name)]
            if nr > LAST_CAP or not lc.bounding_has(nr):
                raise InvalidArgument(
                    f"operation not permitted: process.capabilities.{kind}: {normalize(name)}"
                    " is not in the runtime's bounding set"
                )


def parse_status(text: str) -> dict:
    """CapBnd/CapEff/CapPrm/CapInh/CapAmb of a /proc/PID/status text, as name lists."""
    keys = {
        "CapBnd": "bounding",
        "CapEff": "effective",
        "CapPrm": "permitted",
        "CapInh": "inheritable",
        "CapAmb": "ambient",
    }
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            out[keys[key]] = from_mask(int(value.strip(), 16))
    return out


def current(pid: int | str = "self") -> dict:
    """The capability sets of a process, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        return parse_status(f.read())
