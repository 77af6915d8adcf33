"""`cellbox save -o PATH`: a regular file is replaced atomically, a special file is written into.

As root, replacing `-o /dev/null` by a rename would put a regular file where the
device was; Docker writes into it. A fifo stands in for the device here.
"""

from __future__ import annotations

import os
import stat
import threading

from cellbox.runtime.cli.images import _output


def test_a_fifo_is_written_into_not_replaced(tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    with _output(str(fifo)) as f:
        f.write(b"a tar")
    reader.join(timeout=10)
    assert got == [b"a tar"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fifo"]


def test_a_regular_file_is_replaced_whole(tmp_path):
    out = tmp_path / "img.tar"
    out.write_bytes(b"old contents that are longer")
    with _output(str(out)) as f:
        f.write(b"new")
    assert out.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.tar"]
