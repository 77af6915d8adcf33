"""Sizes as Docker prints them (go-units): decimal with 3 digits for stored bytes
(`docker images`), binary with 4 for memory (`docker stats`)."""

from __future__ import annotations

import pytest
from cellbox.runtime.units import bytes_size, human_size


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "--"),
        (0, "0B"),
        (999, "999B"),
        (1000, "1kB"),
        (1234, "1.23kB"),
        (5_600_000, "5.6MB"),
        (123_456_789, "123MB"),
        (7_890_000_000, "7.89GB"),
        (2 * 10**24, "2YB"),
        (3 * 10**27, "3e+03YB"),  # go-units stops at YB and prints like Go's %g
    ],
)
def test_human_size_is_docker_images_size(n: int | None, text: str) -> None:
    assert human_size(n) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "--"),
        (512, "512B"),
        (1024, "1KiB"),
        (1536 * 1024, "1.5MiB"),
        (64 << 20, "64MiB"),
        (3543040, "3.379MiB"),
        (int(23.54 * (1 << 30)), "23.54GiB"),
    ],
)
def test_bytes_size_is_docker_stats_memory(n: int | None, text: str) -> None:
    assert bytes_size(n) == text


def test_the_cli_uses_the_one_formatter() -> None:
    from cellbox.runtime.cli import common, containers, images, system

    assert common.human_size is human_size and common.bytes_size is bytes_size
    assert images.human_size is human_size and system.human_size is human_size
    assert containers.bytes_size is bytes_size
