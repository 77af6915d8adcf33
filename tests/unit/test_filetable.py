"""One notebook's open files stay a small share of the host's file table (issue 11, 3),
checked by arithmetic against this host's real fs.file-max."""

from __future__ import annotations

import pytest
from cellbox.extension.config import Cellbox
from cellbox.kernel.containers import DEFAULT_PIDS, kernel_run_options
from cellbox.runtime import filetable
from cellbox.runtime.errors import InvalidArgument
from cellbox.runtime.runconfig import parse_ulimits


def _nofile(opts) -> int:
    (soft, hard) = parse_ulimits(opts.ulimits)["RLIMIT_NOFILE"]
    assert soft == hard
    return soft


def test_a_default_notebook_holds_at_most_an_eighth_of_the_table():
    opts = kernel_run_options()
    assert opts.pids_limit == DEFAULT_PIDS
    assert opts.pids_limit * _nofile(opts) <= filetable.file_max() / 8


def test_the_servers_defaults_and_caps_fit_the_share():
    cfg = Cellbox()
    for pids in (cfg.pids_limit, cfg.max_pids):
        assert pids * cfg.nofile_limit <= cfg.max_open_files_share * filetable.file_max()
    cfg.check_open_files()  # the defaults start


def test_a_config_that_lets_one_notebook_fill_the_table_is_refused():
    cfg = Cellbox(max_pids=100_000, nofile_limit=1_000_000)
    with pytest.raises(InvalidArgument, match=r"c\.Cellbox\.pids_limit .*file table"):
        cfg.check_open_files()
    with pytest.raises(InvalidArgument, match="no pids limit"):
        filetable.check_share(0, 1024)
    with pytest.raises(InvalidArgument, match="file table"):
        kernel_run_options(pids_limit=100_000, nofile=1_000_000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (["nofile=1024"], {"RLIMIT_NOFILE": (1024, 1024)}),
        (["nofile=512:2048", "nproc=10:20"], {"RLIMIT_NOFILE": (512, 2048), "RLIMIT_NPROC": (10, 20)}),
        (["core=-1"], {"RLIMIT_CORE": (2**64 - 1, 2**64 - 1)}),
    ],
)
def test_ulimit_parsing(text, expected):
    assert parse_ulimits(text) == expected


@pytest.mark.parametrize("bad", ["nofile", "nofile=x", "nosuch=1", "nofile=10:5", "nofile=-5"])
def test_bad_ulimits_are_one_line_errors(bad):
    with pytest.raises(InvalidArgument, match="ulimit"):
        parse_ulimits([bad])


def test_the_default_nofile_fits_whichever_pids_setting_is_larger():
    """A server that lowers max_pids below pids_limit still starts with the default nofile."""
    cfg = Cellbox(pids_limit=512, max_pids=64)
    cfg.check_open_files()
    assert cfg.pids_limit * cfg.nofile_limit <= cfg.max_open_files_share * filetable.file_max()
