"""A container's open files are bounded by pids x nofile, whatever it tries (issue 11, 3).
Small limits set by the test: the host's own table is never approached."""

from __future__ import annotations

import subprocess

import pytest
from cellbox.runtime.engine import RunOptions
from helpers.engine import run_capture

pytestmark = pytest.mark.root

HOG = r"""
#include <fcntl.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    int p[2], forked = 0, total = 0;
    pipe(p);
    for (int i = 0; i < 40; i++) {
        pid_t pid = fork();
        if (pid < 0) break;
        if (pid == 0) {
            int n = 0;
            while (n < 100000 && open("/dev/null", O_RDONLY) >= 0) n++;
            write(p[1], &n, sizeof n);
            pause();
        }
        forked++;
    }
    for (int i = 0; i < forked; i++) { int n; read(p[0], &n, sizeof n); total += n; }
    printf("%d %d\n", forked, total);
    fflush(stdout);
    return 0;
}
"""


@pytest.mark.parametrize("userns", ["", "auto"])
def test_open_files_stop_at_pids_times_nofile(engine, busybox_rootfs, tmp_path, userns):
    src = tmp_path / "hog.c"
    src.write_text(HOG)
    subprocess.run(["gcc", "-static", "-O1", "-o", str(busybox_rootfs / "fdhog"), str(src)], check=True)
    opts = RunOptions(rootfs=str(busybox_rootfs), command=["/fdhog"], pids_limit=8, ulimits=["nofile=64:64"], userns=userns)
    code, out = run_capture(engine, opts)
    assert code == 0, out
    forked, total = map(int, out.split())
    assert forked <= 7  # the pids limit counts the hog itself
    assert 0 < total <= forked * 64  # each process stopped at its own 64 (less stdio)
