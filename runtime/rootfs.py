"""Build a container's root filesystem inside its new mount namespace, then pivot into it.

Runs in the container's first process, single-threaded, as root, before the user's
process exists. Order follows runc's rootfs_linux.go (see SECURITY-CHECKLIST.md).

Every call that changes the kernel's view (mount, mknod, chown, pivot_root, sysctls) goes
through a `Syscalls` object, as youki's rootfs goes through its `Syscall` trait: the real
one (`LINUX`) calls runtime/linux/; tests pass a fake that records the calls, so the
mount order and `secure_join` are checked without root (tests/unit/test_rootfs.py).
Reading the rootfs tree (lstat, readlink, mkdir of mount points) stays plain os calls.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from .linux import syscalls as sc
from .spec import ANN_IDMAP, ANN_LOWER, ANN_UPPER, ANN_WORK, DEFAULT_DEVICES
from .userns import ANN_ROOTLESS

T = TypeVar("T")

_FLAGS: dict[str, tuple[bool, int]] = {
    # option: (clear?, flag)
    "ro": (False, sc.MS_RDONLY),
    "rw": (True, sc.MS_RDONLY),
    "nosuid": (False, sc.MS_NOSUID),
    "suid": (True, sc.MS_NOSUID),
    "nodev": (False, sc.MS_NODEV),
    "dev": (True, sc.MS_NODEV),
    "noexec": (False, sc.MS_NOEXEC),
    "exec": (True, sc.MS_NOEXEC),
    "sync": (False, sc.MS_SYNCHRONOUS),
    "async": (True, sc.MS_SYNCHRONOUS),
    "dirsync": (False, sc.MS_DIRSYNC),
    "remount": (False, sc.MS_REMOUNT),
    "mand": (False, sc.MS_MANDLOCK),
    "nomand": (True, sc.MS_MANDLOCK),
    "atime": (True, sc.MS_NOATIME),
    "noatime": (False, sc.MS_NOATIME),
    "diratime": (True, sc.MS_NODIRATIME),
    "nodiratime": (False, sc.MS_NODIRATIME),
    "bind": (False, sc.MS_BIND),
    "rbind": (False, sc.MS_BIND | sc.MS_REC),
    "relatime": (False, sc.MS_RELATIME),
    "norelatime": (True, sc.MS_RELATIME),
    "strictatime": (False, sc.MS_STRICTATIME),
    "nostrictatime": (True, sc.MS_STRICTATIME),
    "nosymfollow": (False, sc.MS_NOSYMFOLLOW),
}
_PROPAGATION = {
    "private": sc.MS_PRIVATE,
    "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED,
    "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE,
    "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE,
    "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}
_ST_TO_MS = {
    os.ST_RDONLY: sc.MS_RDONLY,
    os.ST_NOSUID: sc.MS_NOSUID,
    os.ST_NODEV: sc.MS_NODEV,
    os.ST_NOEXEC: sc.MS_NOEXEC,
    os.ST_NOATIME: sc.MS_NOATIME,
    os.ST_NODIRATIME: sc.MS_NODIRATIME,
    os.ST_RELATIME: sc.MS_RELATIME,
}


class Syscalls(Protocol):
    """What building a rootfs asks of the kernel (youki's `Syscall` trait)."""

    def mount(self, source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None: ...

    def pivot_rootfs(self, root: str) -> None:
        """pivot_root into root and detach the old root; the cwd ends at the new /."""

    def chdir(self, path: str) -> None: ...

    def mknod(self, path: str, mode: int, device: int) -> None: ...

    def chmod(self, path: str, mode: int) -> None: ...

    def chown(self, path: str, uid: int, gid: int) -> None: ...

    def symlink(self, target: str, link: str) -> None: ...

    def statvfs_flags(self, path: str) -> int:
        """The ST_* flags of the mount path is on."""

    def mountinfo(self) -> str:
        """This process's /proc/self/mountinfo."""

    def write_sysctl(self, key: str, value: str) -> None: ...

    def idmapped_clone(self, path: str, userns_fd: int) -> int:
        """A detached copy of the mount at path, idmapped through the user namespace."""

    def move_mount_fd(self, fd: int, target: str) -> None: ...

    def close(self, fd: int) -> None: ...

    def call_with_fs_ids(self, uid: int, gid: int, fn: Callable[[], T]) -> T:
        """fn() with this thread's filesystem ids set to uid/gid."""


class LinuxSyscalls:
    """The real kernel, through runtime/linux/ (ctypes) and os."""

    def mount(self, source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        sc.mount(source, target, fstype, flags, data)

    def pivot_rootfs(self, root: str) -> None:
        """pivot_root(".", ".") then detach the old root (runc's pivotRoot)."""
        oldroot = os.open("/", os.O_DIRECTORY | os.O_RDONLY)
        newroot = os.open(root, os.O_DIRECTORY | os.O_RDONLY)
        try:
            os.fchdir(newroot)
            sc.pivot_root(".", ".")
            os.fchdir(oldroot)
            sc.mount("", ".", None, sc.MS_SLAVE | sc.MS_REC)
            sc.umount(".", sc.MNT_DETACH)
            os.chdir("/")
        finally:
            os.close(oldroot)
            os.close(newroot)

    def chdir(self, path: str) -> None:
        os.chdir(path)

    def mknod(self, path: str, mode: int, device: int) -> None:
        os.mknod(path, mode, device)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(path, uid, gid)

    def symlink(self, target: str, link: str) -> None:
        os.symlink(target, link)

    def statvfs_flags(self, path: str) -> int:
        return os.statvfs(path).f_flag

    def mountinfo(self) -> str:
        with open("/proc/self/mountinfo") as f:
            return f.read()

    def write_sysctl(self, key: str, value: str) -> None:
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)

    def idmapped_clone(self, path: str, userns_fd: int) -> int:
        return sc.idmapped_clone(path, userns_fd)

    def move_mount_fd(self, fd: int, target: str) -> None:
        sc.move_mount_fd(fd, target)

    def close(self, fd: int) -> None:
        os.close(fd)

    def call_with_fs_ids(self, uid: int, gid: int, fn: Callable[[], T]) -> T:
        return sc.call_with_fs_ids(uid, gid, fn)


LINUX = LinuxSyscalls()


def parse_options(options: list[str]) -> tuple[int, int, str]:
    """Mount options -> (flags, propagation flags, data string)."""
    flags = 0
    prop = 0
    data = []
    for opt in options:
        if opt in _FLAGS:
            clear, flag = _FLAGS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in _PROPAGATION:
            prop |= _PROPAGATION[opt]
        else:
            data.append(opt)
    return flags, prop, ",".join(data)


def secure_join(root: str, unsafe: str) -> str:
    """Resolve `unsafe` under `root` as if root were `/`: symlinks never lead out."""
    parts = [p for p in unsafe.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 255:
                raise OSError(errno.ELOOP, f"too many symlinks resolving {unsafe}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _mkdir_p(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def _ensure_target(path: str, is_dir: bool) -> None:
    if os.path.lexists(path):
        return
    if is_dir:
        _mkdir_p(path)
    else:
        _mkdir_p(os.path.dirname(path))
        with open(path, "a"):
            pass


# The rootfs of a container whose monitor mounted it (mount_idmapped_overlay) is the
# working dir that the init inherits (moved by the kernel into the init's own mount
# namespace when the init unshares it); the init then names it from its parent.
STARTED_IN_PARENT = "/proc/self/cwd"


def mount_overlay(root: str, annotations: dict[str, str], syscalls: Syscalls = LINUX) -> None:
    """Mount the image layers and the container's upper dir at root.path."""
    lower = annotations.get(ANN_LOWER)
    if not lower:
        return
    upper = annotations.get(ANN_UPPER)
    work = annotations.get(ANN_WORK)
    _mkdir_p(root)
    if upper and work:
        # The upper dir alone must hold every change (commit reads it): no redirects, no metacopy.
        data = f"lowerdir={lower},upperdir={upper},workdir={work},redirect_dir=off,metacopy=off"
    else:
        data = f"lowerdir={lower}"
    if annotations.get(ANN_ROOTLESS) == "true":
        # Mounted inside an ordinary user's namespace (Linux 5.11): whiteouts and opaque
        # dirs live in user.overlay.* xattrs, as the user may set no trusted.* ones. The
        # kernel refuses redirect_dir/metacopy options there (both are off in it anyway).
        data = data.replace(",redirect_dir=off,metacopy=off", "") + ",userxattr"
    try:
        syscalls.mount("overlay", root, "overlay", 0, data)
    except PermissionError as e:
        if annotations.get(ANN_ROOTLESS) != "true":
            raise
        raise PermissionError(
            e.errno, "the kernel refused overlayfs in a user namespace (rootless needs Linux 5.11 or newer)"
        ) from None


def mount_idmapped_overlay(
    root: str, annotations: dict[str, str], userns_fd: int, host_base: int, syscalls: Syscalls = LINUX
) -> None:
    """The overlay of a container with a user namespace of its own, mounted by the monitor
    (host root, in a mount namespace of its own that the init's is copied from).

    Every layer is seen through an idmapped mount of the namespace, so files that the
    disk keeps as container ids (0 for root) show as the container's host ids, and what
    the container creates is stored as container ids again: commit, diff and snapshots
    read the same upper dir with or without a user namespace. The upper and work dirs
    must share one mount, so their parent is idmapped once at <parent>/idmapped.
    """
    try:
        _mount_idmapped_overlay(syscalls, root, annotations, userns_fd, host_base)
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EINVAL):
            raise OSError(
                e.errno,
                f"{e.strerror} (a user namespace of the container's own needs idmapped mounts "
                "and overlayfs over them: Linux 5.19 or newer, on ext4, xfs or btrfs; or --userns host)",
            ) from None
        raise


def _mount_idmapped_overlay(
    syscalls: Syscalls, root: str, annotations: dict[str, str], userns_fd: int, host_base: int
) -> None:
    lowers = annotations[ANN_LOWER].split(":")
    upper, work = annotations[ANN_UPPER], annotations[ANN_WORK]
    parent = os.path.dirname(upper)
    if os.path.dirname(work) != parent:
        raise ValueError("an idmapped overlay needs its upper and work dirs side by side")
    for layer in dict.fromkeys(lowers):
        fd = syscalls.idmapped_clone(layer, userns_fd)
        try:
            syscalls.move_mount_fd(fd, layer)  # over itself, in this mount namespace only
        finally:
            syscalls.close(fd)
    view = os.path.join(parent, "idmapped")
    os.makedirs(view, mode=0o700, exist_ok=True)
    fd = syscalls.idmapped_clone(parent, userns_fd)
    try:
        syscalls.move_mount_fd(fd, view)
    finally:
        syscalls.close(fd)
    up, wk = (os.path.join(view, os.path.basename(p)) for p in (upper, work))
    data = f"lowerdir={':'.join(lowers)},upperdir={up},workdir={wk},redirect_dir=off,metacopy=off"
    _mkdir_p(root)
    syscalls.call_with_fs_ids(host_base, host_base, lambda: syscalls.mount("overlay", root, "overlay", 0, data))


def bind_host_paths(
    root: str,
    config: dict[str, Any],
    host_base: int,
    syscalls: Syscalls = LINUX,
    make_userns: Callable[[dict[str, Any]], int] | None = None,
) -> None:
    """The bind mounts of a container with a user namespace of its own, made by the
    monitor: their sources may lie below dirs closed to container root. Mount points the
    binds need are created as container root (through the idmapped upper dir).

    A bind with uidMappings (a named volume, the notebook's folder) is cloned first, as
    host root, idmapped through a namespace of those mappings (make_userns, default the
    intermediate's idmap_userns): container root's files are stored as id 0 (the host
    user the server runs as), never as an id of the container's range. Its source is
    opened without following any symlink (one planted since the path was resolved, by
    another container that sees the parent dir, is refused, not followed).
    """
    clones: dict[int, int] = {}
    try:
        for i, m in enumerate(config.get("mounts") or []):
            if is_bind(m) and m.get("uidMappings"):
                clones[i] = _idmapped_clone(m, syscalls, make_userns)

        def bind_all() -> None:
            for i, m in enumerate(config.get("mounts") or []):
                if i in clones:
                    _attach_clone(root, m, clones.pop(i), syscalls)
                elif is_bind(m):
                    mount_one(root, m, syscalls)

        syscalls.call_with_fs_ids(host_base, host_base, bind_all)
    finally:
        for fd in clones.values():
            syscalls.close(fd)


def _idmapped_clone(m: dict[str, Any], syscalls: Syscalls, make_userns: Callable[[dict[str, Any]], int] | None) -> int:
    from .images import safewalk

    if make_userns is None:
        from .roles.intermediate import idmap_userns as make_userns
    source = m["source"]
    top = safewalk.open_root("/")
    try:
        try:
            src = safewalk.open_beneath(top, source.lstrip("/"), os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            if stat.S_ISLNK(os.fstat(src).st_mode):  # O_PATH|O_NOFOLLOW opens a last-component link itself
                os.close(src)
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
        except OSError as e:
            why = " (a symlink on its path is never followed)" if e.errno in (errno.ELOOP, errno.EXDEV) else ""
            raise OSError(e.errno, os.strerror(e.errno) + why, f"volume source {source}") from None
    finally:
        os.close(top)
    try:
        ns = make_userns({"linux": {"uidMappings": m["uidMappings"], "gidMappings": m.get("gidMappings") or m["uidMappings"]}})
        try:
            return syscalls.idmapped_clone(f"/proc/self/fd/{src}", ns)
        finally:
            os.close(ns)
    finally:
        os.close(src)


def _attach_clone(root: str, m: dict[str, Any], fd: int, syscalls: Syscalls) -> None:
    """Put an idmapped clone at its destination (resolved inside root) with its flags."""
    dest = secure_join(root, m["destination"])
    flags, prop, _data = parse_options(list(m.get("options") or []))
    _ensure_target(dest, os.path.isdir(f"/proc/self/fd/{fd}"))
    try:
        syscalls.move_mount_fd(fd, dest)
    finally:
        syscalls.close(fd)
    extra = flags & ~(sc.MS_BIND | sc.MS_REC | sc.MS_REMOUNT)
    if extra:
        syscalls.mount("", dest, None, extra | sc.MS_BIND | sc.MS_REMOUNT | _locked_flags(syscalls, dest))
    if prop:
        syscalls.mount("", dest, None, prop)


def _mount_cgroup(syscalls: Syscalls, target: str, flags: int, cgroupns: bool = True) -> None:
    """Show the container's own cgroups at /sys/fs/cgroup (its cgroup namespace root)."""
    hierarchies = []
    for line in syscalls.mountinfo().splitlines():
        fields = line.split()
        if not fields:
            continue
        sep = fields.index("-")
        fstype, super_opts = fields[sep + 1], fields[sep + 3]
        if fstype in ("cgroup", "cgroup2"):
            hierarchies.append((fields[4], fstype, super_opts))
    if len(hierarchies) == 1 and hierarchies[0][1] == "cgroup2":
        syscalls.mount("cgroup2", target, "cgroup2", flags)
        return
    syscalls.mount("tmpfs", target, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=755")
    for mountpoint, fstype, super_opts in hierarchies:
        if not mountpoint.startswith("/sys/fs/cgroup/"):
            continue
        name = mountpoint[len("/sys/fs/cgroup/") :]
        sub = os.path.join(target, name)
        _mkdir_p(sub)
        opts = ",".join(o for o in super_opts.split(",") if o not in ("rw", "ro"))
        own = "" if cgroupns else _own_cgroup_dir(mountpoint, fstype, super_opts)
        try:
            if own:
                # No cgroup namespace of its own (podman on v1): a fresh mount would show
                # the host's whole tree; runc binds the container's own group instead.
                syscalls.mount(own, sub, None, sc.MS_BIND | sc.MS_REC)
                syscalls.mount(own, sub, None, sc.MS_BIND | sc.MS_REMOUNT | flags)
            else:
                syscalls.mount("cgroup", sub, fstype, flags, None if fstype == "cgroup2" else opts)
        except OSError:
            os.rmdir(sub)
    syscalls.mount("", target, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)


def _own_cgroup_dir(mountpoint: str, fstype: str, super_opts: str) -> str:
    """This process's group below a v1 hierarchy's host mount point ("" for the root)."""
    if fstype != "cgroup":
        return ""
    controllers = {o for o in super_opts.split(",") if o not in ("rw", "ro")}
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    for line in lines:
        _id, names, path = line.split(":", 2)
        if names and set(names.split(",")) <= controllers and set(names.split(",")) & controllers:
            path = path.strip("/")
            return os.path.join(mountpoint, path) if path else ""
    return ""


def is_bind(m: dict[str, Any]) -> bool:
    return m.get("type") == "bind" or bool(parse_options(list(m.get("options") or []))[0] & sc.MS_BIND)


def mount_one(root: str, m: dict[str, Any], syscalls: Syscalls = LINUX, cgroupns: bool = True) -> None:
    dest = secure_join(root, m["destination"])
    mtype = m.get("type") or ""
    source = m.get("source") or mtype or "none"
    options = list(m.get("options") or [])
    flags, prop, data = parse_options(options)
    if is_bind(m):
        flags |= sc.MS_BIND
        src_is_dir = os.path.isdir(source)
        _ensure_target(dest, src_is_dir)
        syscalls.mount(source, dest, None, flags & (sc.MS_BIND | sc.MS_REC))
        # A bind takes no other flags until it is remounted.
        extra = flags & ~(sc.MS_BIND | sc.MS_REC | sc.MS_REMOUNT)
        if extra:
            syscalls.mount(source, dest, None, extra | sc.MS_BIND | sc.MS_REMOUNT | _locked_flags(syscalls, dest))
    elif mtype == "cgroup":
        _ensure_target(dest, True)
        _mount_cgroup(syscalls, dest, flags, cgroupns)
    elif mtype == "sysfs":
        _ensure_target(dest, True)
        try:
            syscalls.mount(source, dest, "sysfs", flags, data or None)
        except PermissionError:
            # No network namespace of our own: a read-only bind of the host's /sys.
            syscalls.mount("/sys", dest, None, sc.MS_BIND | sc.MS_REC)
            syscalls.mount("/sys", dest, None, sc.MS_BIND | sc.MS_REMOUNT | flags | _locked_flags(syscalls, dest))
    elif mtype == "tmpfs" and "tmpcopyup" in options:
        _ensure_target(dest, True)
        data = ",".join(o for o in data.split(",") if o and o != "tmpcopyup")
        below = os.open(dest, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            syscalls.mount(source, dest, "tmpfs", flags, data or None)
            _copy_up(f"/proc/self/fd/{below}", dest, not any(o.startswith("mode=") for o in options))
        finally:
            os.close(below)
    else:
        _ensure_target(dest, True)
        syscalls.mount(source, dest, mtype or None, flags, data or None)
    if prop:
        syscalls.mount("", dest, None, prop)


def _copy_up(src: str, dest: str, same_mode: bool) -> None:
    """tmpcopyup (runc's and crun's extension, podman's --tmpfs): the tmpfs starts with a
    copy of what the image has at that path, owners and modes kept."""
    import shutil

    mounted_mode = os.stat(dest).st_mode & 0o7777
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    for top, dirs, files in os.walk(src):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(top, name))
            os.lchown(os.path.join(dest, os.path.relpath(top, src), name), st.st_uid, st.st_gid)
    st = os.stat(src)
    os.chown(dest, st.st_uid, st.st_gid)
    os.chmod(dest, st.st_mode & 0o7777 if same_mode else mounted_mode)  # a mode= option wins


def _locked_flags(syscalls: Syscalls, path: str) -> int:
    """The flags a remount must keep (the kernel refuses to clear locked ones)."""
    f = syscalls.statvfs_flags(path)
    return sum(ms for st, ms in _ST_TO_MS.items() if f & st and ms != sc.MS_RDONLY)


def create_devices(root: str, devices: list[dict[str, Any]], syscalls: Syscalls = LINUX) -> None:
    dev = secure_join(root, "/dev")
    for d in [*DEFAULT_DEVICES, *devices]:
        path = secure_join(root, d["path"])
        _mkdir_p(os.path.dirname(path))
        kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[d.get("type", "c")]
        mode = d.get("fileMode", 0o666)
        if os.path.lexists(path):
            os.unlink(path)
        try:
            syscalls.mknod(path, kind | mode, os.makedev(d.get("major", 0), d.get("minor", 0)))
        except PermissionError:
            # In a user namespace mknod is refused: bind the host's node instead (as runc does).
            with open(path, "a"):
                pass
            syscalls.mount(d["path"], path, None, sc.MS_BIND)
            continue
        syscalls.chmod(path, mode)  # mknod applies the umask
        syscalls.chown(path, d.get("uid", 0), d.get("gid", 0))
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ):
        link = os.path.join(dev, name)
        if not os.path.lexists(link):
            syscalls.symlink(target, link)
    ptmx = os.path.join(dev, "ptmx")
    if os.path.isdir(os.path.join(dev, "pts")):
        if os.path.lexists(ptmx):
            os.unlink(ptmx)
        syscalls.symlink("pts/ptmx", ptmx)


def mask_paths(root: str, paths: list[str], syscalls: Syscalls = LINUX) -> None:
    null = secure_join(root, "/dev/null")
    for p in paths:
        target = secure_join(root, p)
        try:
            st = os.lstat(target)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            syscalls.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY, "size=0,nr_blocks=1")
        else:
            syscalls.mount(null, target, None, sc.MS_BIND)


def readonly_paths(root: str, paths: list[str], syscalls: Syscalls = LINUX) -> None:
    for p in paths:
        target = secure_join(root, p)
        if not os.path.lexists(target):
            continue
        syscalls.mount(target, target, None, sc.MS_BIND | sc.MS_REC)
        syscalls.mount(target, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | _locked_flags(syscalls, target))


# linux.rootfsPropagation values applied to the new "/" after pivot_root (as runc >= 1.2
# does): pivot_root refuses a shared root (EINVAL) and an unbindable one cannot be bound
# onto itself, so until then the tree stays rslave.
_AFTER_PIVOT = ("shared", "rshared", "unbindable", "runbindable")


def prepare_root(root: str, propagation: str | None, syscalls: Syscalls = LINUX) -> None:
    """Keep our mounts from reaching the host, and make root.path a mount point."""
    if propagation in _AFTER_PIVOT:
        propagation = None
    syscalls.mount("", "/", None, _PROPAGATION.get(propagation or "rslave", sc.MS_SLAVE | sc.MS_REC))
    # The parent of the rootfs must not be shared, or pivot_root fails and mounts leak.
    syscalls.mount(root, root, None, sc.MS_BIND | sc.MS_REC)
    syscalls.mount("", root, None, sc.MS_PRIVATE)


def write_sysctls(sysctls: dict[str, str], syscalls: Syscalls = LINUX) -> None:
    """Set namespaced sysctls (validated by spec.validate) through our namespaces' /proc/sys."""
    for key, value in sysctls.items():
        syscalls.write_sysctl(key, str(value))


def setup(config: dict[str, Any], syscalls: Syscalls = LINUX) -> str:
    """Everything up to (not including) pivot_root. Returns the absolute root path."""
    linux = config.get("linux") or {}
    monitor_mounted = (config.get("annotations") or {}).get(ANN_IDMAP) == "true"
    if monitor_mounted:
        # The monitor mounted the rootfs and started us in it (the dirs above its parent
        # may be closed to container root; its parent, the container's dir, is not).
        # Through the parent, so that the name crosses the self-bind prepare_root makes
        # (pivot_root refuses the copied, locked mount itself).
        syscalls.chdir("..")
        root = os.path.join(STARTED_IN_PARENT, os.path.basename(config["root"]["path"].rstrip("/")))
    else:
        root = os.path.realpath(config["root"]["path"])
        mount_overlay(root, config.get("annotations") or {}, syscalls)
    if not os.path.isdir(root):
        raise FileNotFoundError(errno.ENOENT, f"rootfs {root} does not exist")
    if not _own_mount_ns(config):
        write_sysctls(linux.get("sysctl") or {}, syscalls)
        return root  # spec.validate refused every mount such a config could ask for
    prepare_root(root, linux.get("rootfsPropagation"), syscalls)
    cgroupns = any(n.get("type") == "cgroup" for n in linux.get("namespaces") or [])
    for m in config.get("mounts") or []:
        if monitor_mounted and is_bind(m):
            continue  # made by the monitor (bind_host_paths)
        mount_one(root, m, syscalls, cgroupns)
    create_devices(root, linux.get("devices") or [], syscalls)
    write_sysctls(linux.get("sysctl") or {}, syscalls)
    return root


def _own_mount_ns(config: dict[str, Any]) -> bool:
    """Whether linux.namespaces asks for a new mount namespace (not joining one by path)."""
    return any(n.get("type") == "mount" for n in (config.get("linux") or {}).get("namespaces") or [])


def finish(config: dict[str, Any], root: str, syscalls: Syscalls = LINUX) -> None:
    """After the mounts: mask, protect, pivot, and make root read-only if asked."""
    linux = config.get("linux") or {}
    if not _own_mount_ns(config):
        os.chroot(root)  # the runtime's mount namespace: no pivot_root (runc chroots too)
        os.chdir("/")
        return
    mask_paths(root, linux.get("maskedPaths") or [], syscalls)
    readonly_paths(root, linux.get("readonlyPaths") or [], syscalls)
    syscalls.pivot_rootfs(root)
    if linux.get("rootfsPropagation") in _AFTER_PIVOT:
        syscalls.mount("", "/", None, _PROPAGATION[linux["rootfsPropagation"]])
    if (config.get("root") or {}).get("readonly"):
        syscalls.mount("", "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | _locked_flags(syscalls, "/"))
