"""Issue 14, the kernelspec alone (no server extension): the cellbox provisioner mounts
the folder the server starts the kernel in (jupyter's `cwd`) at /notebook, its working
directory, owned on the host by the user the server runs as."""

from __future__ import annotations

import os

import pytest
from helpers.kernel import cell, kernel_env

pytestmark = pytest.mark.root("containers, idmapped mounts")


@pytest.fixture(scope="module")
def kenv():
    yield from kernel_env()


def test_the_kernel_starts_in_the_folder_it_is_given(kenv, tmp_path):
    from jupyter_client.manager import KernelManager

    (tmp_path / "data.csv").write_text("1,2\n")
    km = KernelManager(kernel_name="cellbox")
    km.start_kernel(cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        out = cell(
            kc,
            "import os; print(os.getcwd()); print(open('data.csv').read().strip()); open('w.txt', 'w').write('x')",
        )
        assert out.split() == ["/notebook", "1,2"]
        st = (tmp_path / "w.txt").stat()
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
