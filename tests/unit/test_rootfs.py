"""runtime/rootfs.py without root: the mount order of a container start and secure_join.

rootfs asks the kernel through a Syscalls object (youki's `Syscall` trait); here a fake
records every call and does no mount, so the order runc's rootfs_linux.go prescribes
(overlay, propagation, the config's mounts in order, devices, sysctls, masks, read-only
paths, pivot_root, read-only root) is checked on a plain temp dir. secure_join runs on
real symlinks in a temp tree: it only reads it.
"""

from __future__ import annotations

import errno
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cellbox.runtime import rootfs, spec
from cellbox.runtime.linux import syscalls as sc
from cellbox.runtime.rootfs import secure_join

T = TypeVar("T")

CGROUP2_ONLY = "30 1 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw\n"
CGROUP_V1 = (
    "25 1 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755\n"
    "30 25 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
    "31 25 0:27 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids\n"
    "32 25 0:28 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n"
)


class FakeSyscalls:
    """Records what rootfs asks of the kernel. Device nodes become empty files and
    symlinks are made, so the later steps see the tree the real calls would leave."""

    def __init__(self, mountinfo: str = CGROUP2_ONLY, refuse_mknod: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._mountinfo = mountinfo
        self.refuse_mknod = refuse_mknod
        self.fs_ids: tuple[int, int] | None = None

    def mount(
        self, source: str, target: str, fstype: str | None, flags: int, data: str | None = None
    ) -> None:
        self.calls.append(("mount", source, target, fstype, flags, data, self.fs_ids))

    def pivot_rootfs(self, root: str) -> None:
        self.calls.append(("pivot_rootfs", root))

    def chdir(self, path: str) -> None:
        self.calls.append(("chdir", path))

    def mknod(self, path: str, mode: int, device: int) -> None:
        if self.refuse_mknod:
            raise PermissionError(errno.EPERM, "mknod in a user namespace")
        self.calls.append(("mknod", path, mode, device))
        Path(path).touch()

    def chmod(self, path: str, mode: int) -> None:
        self.calls.append(("chmod", path, mode))

    def chown(self, path: str, uid: int, gid: int) -> None:
        self.calls.append(("chown", path, uid, gid))

    def symlink(self, target: str, link: str) -> None:
        self.calls.append(("symlink", target, link))
        os.symlink(target, link)

    def statvfs_flags(self, path: str) -> int:
        return 0

    def mountinfo(self) -> str:
        return self._mountinfo

    def write_sysctl(self, key: str, value: str) -> None:
        self.calls.append(("sysctl", key, value))

    def idmapped_clone(self, path: str, userns_fd: int) -> int:
        self.calls.append(("idmapped_clone", path, userns_fd))
        return 100 + len(self.calls)

    def move_mount_fd(self, fd: int, target: str) -> None:
        self.calls.append(("move_mount_fd", fd, target))

    def close(self, fd: int) -> None:
        self.calls.append(("close", fd))

    def call_with_fs_ids(self, uid: int, gid: int, fn: Callable[[], T]) -> T:
        self.fs_ids = (uid, gid)
        try:
            return fn()
        finally:
            self.fs_ids = None

    def mounts(self, root: str) -> list[tuple[str, str, str | None]]:
        """(source, target, fstype) of each mount in order; paths in root.path written
        as "rootfs/...", so that the host's / and the container's stay apart."""

        def short(path: str) -> str:
            return (
                "rootfs" + path[len(root) :]
                if path == root or path.startswith(root + "/")
                else path
            )

        return [(short(c[1]), short(c[2]), c[3]) for c in self.calls if c[0] == "mount"]

    def kinds(self) -> list[str]:
        """The kind of each call in order, runs of one kind collapsed (mount, mknod, ...)."""
        out: list[str] = []
        for call in self.calls:
            if not out or out[-1] != call[0]:
                out.append(call[0])
        return out


def test_the_fake_answers_everything_the_protocol_asks() -> None:
    # A method added to Syscalls and not to the fake (or the real one) fails here, not in a container.
    wanted = {
        n
        for n, _ in inspect.getmembers(rootfs.Syscalls, inspect.isfunction)
        if not n.startswith("_")
    }
    assert wanted >= {"mount", "pivot_rootfs", "mknod", "chown"}
    for impl in (FakeSyscalls, rootfs.LinuxSyscalls):
        have = {n for n, _ in inspect.getmembers(impl, inspect.isfunction)}
        assert wanted <= have, (impl.__name__, wanted - have)
        for name in wanted:
            want = list(inspect.signature(getattr(rootfs.Syscalls, name)).parameters)
            assert list(inspect.signature(getattr(impl, name)).parameters) == want, (
                impl.__name__,
                name,
            )


# ---------------------------------------------------------------- the start of a container


def container_config(tmp_path: Path) -> dict[str, Any]:
    """`runc spec`'s config (cellbox's defaults) over an overlay, plus a read-only bind and a sysctl."""
    root = tmp_path / "ctr" / "rootfs"
    for d in ("proc/acpi", "proc/sys", "sys/firmware"):
        (root / d).mkdir(parents=True)
    (root / "proc" / "kcore").touch()
    (tmp_path / "data").mkdir()
    config = spec.default_spec(["sh"], rootfs=str(root))
    config["annotations"] = {
        spec.ANN_LOWER: f"{tmp_path}/l2:{tmp_path}/l1",
        spec.ANN_UPPER: f"{tmp_path}/ctr/upper",
        spec.ANN_WORK: f"{tmp_path}/ctr/work",
    }
    config["mounts"].append(
        {
            "destination": "/data",
            "type": "bind",
            "source": str(tmp_path / "data"),
            "options": ["rbind", "ro", "nosuid"],
        }
    )
    config["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
    config["linux"]["maskedPaths"] = ["/proc/acpi", "/proc/kcore", "/proc/absent"]
    config["linux"]["readonlyPaths"] = ["/proc/sys", "/proc/absent"]
    return config


def start(config: dict[str, Any], fake: FakeSyscalls) -> str:
    """What the container's init does with its rootfs: setup, then finish."""
    root = rootfs.setup(config, fake)
    rootfs.finish(config, root, fake)
    return root


def test_mount_order_of_a_container_start(tmp_path: Path) -> None:
    fake = FakeSyscalls()
    config = container_config(tmp_path)
    root = start(config, fake)
    assert root == os.path.realpath(config["root"]["path"])
    data = str(tmp_path / "data")
    assert fake.mounts(root) == [
        # the image layers and the container's upper dir, at root.path
        ("overlay", "rootfs", "overlay"),
        # propagation: nothing reaches the host; root.path its own private mount
        ("", "/", None),
        ("rootfs", "rootfs", None),
        ("", "rootfs", None),
        # the config's mounts, in the config's order
        ("proc", "rootfs/proc", "proc"),
        ("tmpfs", "rootfs/dev", "tmpfs"),
        ("devpts", "rootfs/dev/pts", "devpts"),
        ("shm", "rootfs/dev/shm", "tmpfs"),
        ("mqueue", "rootfs/dev/mqueue", "mqueue"),
        ("sysfs", "rootfs/sys", "sysfs"),
        ("cgroup2", "rootfs/sys/fs/cgroup", "cgroup2"),
        (data, "rootfs/data", None),  # a bind takes its flags only when remounted
        (data, "rootfs/data", None),
        # masked: a dir under an empty read-only tmpfs, a file under /dev/null
        ("tmpfs", "rootfs/proc/acpi", "tmpfs"),
        ("rootfs/dev/null", "rootfs/proc/kcore", None),
        # read-only paths: bound over themselves, then remounted read-only
        ("rootfs/proc/sys", "rootfs/proc/sys", None),
        ("rootfs/proc/sys", "rootfs/proc/sys", None),
        # after pivot_root (the container's /): the whole root read-only
        ("", "/", None),
    ]
    mounts = [c for c in fake.calls if c[0] == "mount"]
    flags = [c[4] for c in mounts]
    data_str = [c[5] for c in mounts]
    assert data_str[0] == (
        f"lowerdir={tmp_path}/l2:{tmp_path}/l1,upperdir={tmp_path}/ctr/upper,workdir={tmp_path}/ctr/work,"
        "redirect_dir=off,metacopy=off"
    )
    assert flags[1:4] == [sc.MS_SLAVE | sc.MS_REC, sc.MS_BIND | sc.MS_REC, sc.MS_PRIVATE]
    assert flags[4] == sc.MS_NOSUID | sc.MS_NOEXEC | sc.MS_NODEV
    assert flags[9] & sc.MS_RDONLY and flags[10] & sc.MS_RDONLY  # /sys and its cgroups
    assert flags[11] == sc.MS_BIND | sc.MS_REC
    assert flags[12] == sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID
    assert flags[13] == sc.MS_RDONLY and data_str[13] == "size=0,nr_blocks=1"
    assert flags[15:17] == [sc.MS_BIND | sc.MS_REC, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY]
    assert flags[17] == sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY
    # Devices and sysctls after every mount of the config, masks after them, pivot_root
    # after the masks, and the read-only root last.
    assert fake.kinds() == [
        "mount", "mknod", "chmod", "chown", "mknod", "chmod", "chown", "mknod", "chmod", "chown",
        "mknod", "chmod", "chown", "mknod", "chmod", "chown", "mknod", "chmod", "chown",
        "symlink", "sysctl", "mount", "pivot_rootfs", "mount",
    ]  # fmt: skip
    assert ("pivot_rootfs", root) in fake.calls and (
        "sysctl",
        "net.ipv4.ip_forward",
        "1",
    ) in fake.calls
    nodes = [Path(c[1]).relative_to(root).as_posix() for c in fake.calls if c[0] == "mknod"]
    assert nodes == [d["path"].lstrip("/") for d in spec.DEFAULT_DEVICES]
    links = {Path(c[2]).name: c[1] for c in fake.calls if c[0] == "symlink"}
    assert links == {
        "fd": "/proc/self/fd",
        "stdin": "/proc/self/fd/0",
        "stdout": "/proc/self/fd/1",
        "stderr": "/proc/self/fd/2",
        "core": "/proc/kcore",
        "ptmx": "pts/ptmx",
    }


def test_a_writable_root_is_not_remounted(tmp_path: Path) -> None:
    fake = FakeSyscalls()
    config = container_config(tmp_path)
    config["root"]["readonly"] = False
    start(config, fake)
    assert fake.kinds()[-1] == "pivot_rootfs"


def test_mount_destinations_never_leave_the_rootfs(tmp_path: Path) -> None:
    # A rootfs whose /data is a symlink to the host's /etc (absolute) and whose /up climbs
    # out with ..: the binds land inside the rootfs, where a kernel that follows the
    # same links from the container's / would put them.
    fake = FakeSyscalls()
    config = container_config(tmp_path)
    root = os.path.realpath(config["root"]["path"])
    os.symlink("/etc", os.path.join(root, "data"))
    os.symlink("../../../../../..", os.path.join(root, "up"))
    config["mounts"][-1]["destination"] = "/data/x"
    config["mounts"].append(
        {"destination": "/up/etc/y", "type": "tmpfs", "source": "tmpfs", "options": []}
    )
    start(config, fake)
    targets = [c[2] for c in fake.calls if c[0] == "mount"]
    assert os.path.join(root, "etc", "x") in targets and os.path.join(root, "etc", "y") in targets
    assert all(t == "/" or t.startswith(root) for t in targets), targets
    assert (Path(root) / "etc" / "x").is_dir()  # the mount point was made inside, not on the host


def test_in_a_user_namespace_devices_are_bound_from_the_host(tmp_path: Path) -> None:
    fake = FakeSyscalls(refuse_mknod=True)
    config = container_config(tmp_path)
    root = start(config, fake)
    binds = [
        (c[1], c[2])
        for c in fake.calls
        if c[0] == "mount" and c[4] == sc.MS_BIND and c[1].startswith("/dev/")
    ]
    assert binds == [(d["path"], root + d["path"]) for d in spec.DEFAULT_DEVICES]
    assert not [c for c in fake.calls if c[0] in ("mknod", "chmod", "chown")]
    assert all((Path(root) / d["path"].lstrip("/")).is_file() for d in spec.DEFAULT_DEVICES)


def test_cgroup_v1_hierarchies_under_a_read_only_tmpfs(tmp_path: Path) -> None:
    fake = FakeSyscalls(mountinfo=CGROUP_V1)
    root = start(container_config(tmp_path), fake)
    cg = [c for c in fake.calls if c[0] == "mount" and c[2].startswith(root + "/sys/fs/cgroup")]
    assert [(c[1], c[2][len(root) :], c[3], c[5]) for c in cg] == [
        ("tmpfs", "/sys/fs/cgroup", "tmpfs", "mode=755"),
        ("cgroup", "/sys/fs/cgroup/memory", "cgroup", "memory"),
        ("cgroup", "/sys/fs/cgroup/pids", "cgroup", "pids"),
        ("cgroup", "/sys/fs/cgroup/unified", "cgroup2", None),
        ("", "/sys/fs/cgroup", None, None),
    ]
    assert cg[-1][4] & (sc.MS_REMOUNT | sc.MS_RDONLY) == sc.MS_REMOUNT | sc.MS_RDONLY


def test_idmapped_overlay_maps_every_layer_once_then_mounts_as_the_containers_root(
    tmp_path: Path,
) -> None:
    fake = FakeSyscalls()
    ctr = tmp_path / "ctr"
    ann = {
        spec.ANN_LOWER: f"{tmp_path}/l2:{tmp_path}/l1:{tmp_path}/l2",
        spec.ANN_UPPER: f"{ctr}/upper",
        spec.ANN_WORK: f"{ctr}/work",
    }
    rootfs.mount_idmapped_overlay(str(ctr / "rootfs"), ann, 7, 165536, fake)
    clones = [c[1] for c in fake.calls if c[0] == "idmapped_clone"]
    assert clones == [f"{tmp_path}/l2", f"{tmp_path}/l1", str(ctr)]
    moved = [c[2] for c in fake.calls if c[0] == "move_mount_fd"]
    assert moved == [f"{tmp_path}/l2", f"{tmp_path}/l1", f"{ctr}/idmapped"]
    fds = [c[1] for c in fake.calls if c[0] == "move_mount_fd"]
    assert [c[1] for c in fake.calls if c[0] == "close"] == fds
    (mount,) = [c for c in fake.calls if c[0] == "mount"]
    assert mount[1:4] == ("overlay", str(ctr / "rootfs"), "overlay") and mount[6] == (
        165536,
        165536,
    )
    assert f"upperdir={ctr}/idmapped/upper,workdir={ctr}/idmapped/work" in mount[5]


def test_idmapped_overlay_needs_upper_and_work_side_by_side(tmp_path: Path) -> None:
    ann = {
        spec.ANN_LOWER: "/l",
        spec.ANN_UPPER: f"{tmp_path}/a/upper",
        spec.ANN_WORK: f"{tmp_path}/b/work",
    }
    with pytest.raises(ValueError, match="side by side"):
        rootfs.mount_idmapped_overlay(str(tmp_path / "rootfs"), ann, 7, 165536, FakeSyscalls())


# ---------------------------------------------------------------- secure_join


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    return root


def join(root: Path, unsafe: str) -> str:
    return secure_join(str(root), unsafe)


def test_plain_paths_and_dots(tree: Path) -> None:
    assert join(tree, "/etc/passwd") == f"{tree}/etc/passwd"
    assert join(tree, "etc//./passwd") == f"{tree}/etc/passwd"
    assert join(tree, "/") == str(tree)
    assert join(tree, "") == str(tree)


def test_missing_components_are_joined_as_written(tree: Path) -> None:
    assert join(tree, "/no/such/dir") == f"{tree}/no/such/dir"
    assert join(tree, "/etc/new/../other") == f"{tree}/etc/other"


def test_dotdot_stops_at_the_root(tree: Path) -> None:
    assert join(tree, "/../../../etc/passwd") == f"{tree}/etc/passwd"
    assert join(tree, "/usr/lib/../../../../etc") == f"{tree}/etc"


def test_absolute_symlinks_resolve_under_the_root(tree: Path) -> None:
    os.symlink("/etc", tree / "usr" / "conf")
    os.symlink("/", tree / "slash")
    assert join(tree, "/usr/conf/passwd") == f"{tree}/etc/passwd"
    assert join(tree, "/slash/slash/etc") == f"{tree}/etc"
    assert join(tree, "/slash") == str(tree)


def test_relative_symlinks_climbing_out_stop_at_the_root(tree: Path) -> None:
    os.symlink("../../../../../../../etc", tree / "usr" / "lib" / "up")
    os.symlink("lib", tree / "usr" / "l")
    assert join(tree, "/usr/lib/up/passwd") == f"{tree}/etc/passwd"
    assert join(tree, "/usr/l/up") == f"{tree}/etc"
    assert join(tree, "/usr/lib/up/../../..") == str(tree)


def test_symlink_chains_and_dangling_links(tree: Path) -> None:
    os.symlink("b", tree / "a")
    os.symlink("/c", tree / "b")
    os.symlink("/nowhere/deeper", tree / "c")
    # a -> b -> /c -> /nowhere/deeper, which does not exist: joined as written, inside
    assert join(tree, "/a/file") == f"{tree}/nowhere/deeper/file"


def test_symlink_loops_fail_with_eloop(tree: Path) -> None:
    os.symlink("loop2", tree / "loop1")
    os.symlink("/loop1", tree / "loop2")
    os.symlink("self", tree / "self")
    for path in ("/loop1", "/loop2/x", "/self"):
        with pytest.raises(OSError) as e:
            join(tree, path)
        assert e.value.errno == errno.ELOOP, path


def test_a_link_to_a_host_path_is_read_inside_the_root(tree: Path, tmp_path: Path) -> None:
    # A link naming the host dir that holds the root is a path inside the root too.
    os.symlink(str(tmp_path), tree / "host")
    assert join(tree, "/host/root/etc") == f"{tree}{tmp_path}/root/etc"
