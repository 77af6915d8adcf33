"""cgroups: one interface over v1, v2 and hybrid hierarchies, detected at run time."""

from .cgroup import Cgroup, check_parent, default_parent, open_cgroup
from .layout import Hierarchy, Layout, detect_layout
from .units import cpus_to_quota, parse_memory, shares_to_weight

__all__ = [
    "Cgroup",
    "Hierarchy",
    "Layout",
    "check_parent",
    "cpus_to_quota",
    "default_parent",
    "detect_layout",
    "open_cgroup",
    "parse_memory",
    "shares_to_weight",
]
