"""The progress wrapper the CLI puts around save/load/import streams."""

from __future__ import annotations

import io

from cellbox.runtime.cli.images import _Counting


def test_counting_reader_and_writer_report_every_byte():
    seen: list[tuple[int, int | None]] = []
    r = _Counting(io.BytesIO(b"x" * 10_000), lambda done, total: seen.append((done, total)), 10_000)
    assert r.read(4096) == b"x" * 4096
    assert r.read() == b"x" * (10_000 - 4096)
    assert seen[-1] == (10_000, 10_000)
    out = io.BytesIO()
    w = _Counting(out, lambda done, total: seen.append((done, total)))
    w.write(b"abc")
    w.write(b"de")
    assert out.getvalue() == b"abcde" and seen[-1] == (5, None)
    assert w.getvalue() == b"abcde"  # anything else goes to the wrapped file
