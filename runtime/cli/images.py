"""Image commands (filled in as the image store lands)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    return None
