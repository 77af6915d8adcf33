"""The parent cgroups tests create ("cellbox-test-<random>" at the top of each
hierarchy): find them and remove them, children first."""

from __future__ import annotations

import os
from pathlib import Path


def cgroup_dirs(name: str) -> list[str]:
    """Where a top-level cgroup `name` exists, one path per hierarchy."""
    found = []
    for top in Path("/sys/fs/cgroup").iterdir():
        if (top / name).is_dir():
            found.append(str(top / name))
    return found


def remove_cgroup_tree(name: str) -> None:
    """Remove a test parent cgroup (children first) in every hierarchy."""
    for top in cgroup_dirs(name):
        for root, dirs, _files in os.walk(top, topdown=False):
            for d in dirs:
                try:
                    os.rmdir(os.path.join(root, d))
                except OSError:
                    pass
        try:
            os.rmdir(top)
        except OSError:
            pass
