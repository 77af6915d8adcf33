"""Build a container's root filesystem inside its new mount namespace, then pivot into it.

Runs in the container's first process, single-threaded, as root, before the user's
process exists. Order follows runc's rootfs_linux.go (see SECURITY-CHECKLIST.md).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

from .linux import syscalls as sc
from .spec import ANN_IDMAP, ANN_LOWER, ANN_UPPER, ANN_WORK, DEFAULT_DEVICES

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


def mount_overlay(root: str, annotations: dict[str, str]) -> None:
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
    sc.mount("overlay", root, "overlay", 0, data)


def mount_idmapped_overlay(root: str, annotations: dict[str, str], userns_fd: int, host_base: int) -> None:
    """The overlay of a container with a user namespace of its own, mounted by the monitor
    (host root, in a mount namespace of its own that the init's is copied from).

    Every layer is seen through an idmapped mount of the namespace, so files that the
    disk keeps as container ids (0 for root) show as the container's host ids, and what
    the container creates is stored as container ids again: commit, diff and snapshots
    read the same upper dir with or without a user namespace. The upper and work dirs
    must share one mount, so their parent is idmapped once at <parent>/idmapped.
    """
    try:
        _mount_idmapped_overlay(root, annotations, userns_fd, host_base)
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EINVAL):
            raise OSError(
                e.errno,
                f"{e.strerror} (a user namespace of the container's own needs idmapped mounts "
                "and overlayfs over them: Linux 5.19 or newer, on ext4, xfs or btrfs; or --userns host)",
            ) from None
        raise


def _mount_idmapped_overlay(root: str, annotations: dict[str, str], userns_fd: int, host_base: int) -> None:
    lowers = annotations[ANN_LOWER].split(":")
    upper, work = annotations[ANN_UPPER], annotations[ANN_WORK]
    parent = os.path.dirname(upper)
    if os.path.dirname(work) != parent:
        raise ValueError("an idmapped overlay needs its upper and work dirs side by side")
    for layer in dict.fromkeys(lowers):
        fd = sc.idmapped_clone(layer, userns_fd)
        try:
            sc.move_mount_fd(fd, layer)  # over itself, in this mount namespace only
        finally:
            os.close(fd)
    view = os.path.join(parent, "idmapped")
    os.makedirs(view, mode=0o700, exist_ok=True)
    fd = sc.idmapped_clone(parent, userns_fd)
    try:
        sc.move_mount_fd(fd, view)
    finally:
        os.close(fd)
    up, wk = (os.path.join(view, os.path.basename(p)) for p in (upper, work))
    data = f"lowerdir={':'.join(lowers)},upperdir={up},workdir={wk},redirect_dir=off,metacopy=off"
    _mkdir_p(root)
    sc.call_with_fs_ids(host_base, host_base, lambda: sc.mount("overlay", root, "overlay", 0, data))


def bind_host_paths(root: str, config: dict[str, Any], host_base: int) -> None:
    """The bind mounts of a container with a user namespace of its own, made by the
    monitor: their sources may lie below dirs closed to container root. Mount points the
    binds need are created as container root (through the idmapped upper dir)."""

    def bind_all() -> None:
        for m in config.get("mounts") or []:
            if is_bind(m):
                mount_one(root, m)

    sc.call_with_fs_ids(host_base, host_base, bind_all)


def _mount_cgroup(target: str, flags: int) -> None:
    """Show the container's own cgroups at /sys/fs/cgroup (its cgroup namespace root)."""
    hierarchies = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, super_opts = fields[sep + 1], fields[sep + 3]
            if fstype in ("cgroup", "cgroup2"):
                hierarchies.append((fields[4], fstype, super_opts))
    if len(hierarchies) == 1 and hierarchies[0][1] == "cgroup2":
        sc.mount("cgroup2", target, "cgroup2", flags)
        return
    sc.mount("tmpfs", target, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=755")
    for mountpoint, fstype, super_opts in hierarchies:
        if not mountpoint.startswith("/sys/fs/cgroup/"):
            continue
        name = mountpoint[len("/sys/fs/cgroup/") :]
        sub = os.path.join(target, name)
        _mkdir_p(sub)
        opts = ",".join(o for o in super_opts.split(",") if o not in ("rw", "ro"))
        try:
            sc.mount("cgroup", sub, fstype, flags, None if fstype == "cgroup2" else opts)
        except OSError:
            os.rmdir(sub)
    sc.mount("", target, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)


def is_bind(m: dict[str, Any]) -> bool:
    return m.get("type") == "bind" or bool(parse_options(list(m.get("options") or []))[0] & sc.MS_BIND)


def mount_one(root: str, m: dict[str, Any]) -> None:
    dest = secure_join(root, m["destination"])
    mtype = m.get("type") or ""
    source = m.get("source") or mtype or "none"
    options = list(m.get("options") or [])
    flags, prop, data = parse_options(options)
    if is_bind(m):
        flags |= sc.MS_BIND
        src_is_dir = os.path.isdir(source)
        _ensure_target(dest, src_is_dir)
        sc.mount(source, dest, None, flags & (sc.MS_BIND | sc.MS_REC))
        # A bind takes no other flags until it is remounted.
        extra = flags & ~(sc.MS_BIND | sc.MS_REC | sc.MS_REMOUNT)
        if extra:
            sc.mount(source, dest, None, extra | sc.MS_BIND | sc.MS_REMOUNT | _locked_flags(dest))
    elif mtype == "cgroup":
        _ensure_target(dest, True)
        _mount_cgroup(dest, flags)
    elif mtype == "sysfs":
        _ensure_target(dest, True)
        try:
            sc.mount(source, dest, "sysfs", flags, data or None)
        except PermissionError:
            # No network namespace of our own: a read-only bind of the host's /sys.
            sc.mount("/sys", dest, None, sc.MS_BIND | sc.MS_REC)
            sc.mount("/sys", dest, None, sc.MS_BIND | sc.MS_REMOUNT | flags | _locked_flags(dest))
    else:
        _ensure_target(dest, True)
        sc.mount(source, dest, mtype or None, flags, data or None)
    if prop:
        sc.mount("", dest, None, prop)


def _locked_flags(path: str) -> int:
    """The flags a remount must keep (the kernel refuses to clear locked ones)."""
    f = os.statvfs(path).f_flag
    return sum(ms for st, ms in _ST_TO_MS.items() if f & st and ms != sc.MS_RDONLY)


def create_devices(root: str, devices: list[dict[str, Any]]) -> None:
    dev = secure_join(root, "/dev")
    for d in [*DEFAULT_DEVICES, *devices]:
        path = secure_join(root, d["path"])
        _mkdir_p(os.path.dirname(path))
        kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[d.get("type", "c")]
        mode = d.get("fileMode", 0o666)
        if os.path.lexists(path):
            os.unlink(path)
        try:
            os.mknod(path, kind | mode, os.makedev(d.get("major", 0), d.get("minor", 0)))
        except PermissionError:
            # In a user namespace mknod is refused: bind the host's node instead (as runc does).
            with open(path, "a"):
                pass
            sc.mount(d["path"], path, None, sc.MS_BIND)
            continue
        os.chmod(path, mode)  # mknod applies the umask
        os.chown(path, d.get("uid", 0), d.get("gid", 0))
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ):
        link = os.path.join(dev, name)
        if not os.path.lexists(link):
            os.symlink(target, link)
    ptmx = os.path.join(dev, "ptmx")
    if os.path.isdir(os.path.join(dev, "pts")):
        if os.path.lexists(ptmx):
            os.unlink(ptmx)
        os.symlink("pts/ptmx", ptmx)


def mask_paths(root: str, paths: list[str]) -> None:
    null = secure_join(root, "/dev/null")
    for p in paths:
        target = secure_join(root, p)
        try:
            st = os.lstat(target)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            sc.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY, "size=0,nr_blocks=1")
        else:
            sc.mount(null, target, None, sc.MS_BIND)


def readonly_paths(root: str, paths: list[str]) -> None:
    for p in paths:
        target = secure_join(root, p)
        if not os.path.lexists(target):
            continue
        sc.mount(target, target, None, sc.MS_BIND | sc.MS_REC)
        sc.mount(target, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | _locked_flags(target))


def prepare_root(root: str, propagation: str | None) -> None:
    """Keep our mounts from reaching the host, and make root.path a mount point."""
    sc.mount("", "/", None, _PROPAGATION.get(propagation or "rslave", sc.MS_SLAVE | sc.MS_REC))
    # The parent of the rootfs must not be shared, or pivot_root fails and mounts leak.
    sc.mount(root, root, None, sc.MS_BIND | sc.MS_REC)
    sc.mount("", root, None, sc.MS_PRIVATE)


def pivot(root: str) -> None:
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


def write_sysctls(sysctls: dict[str, str]) -> None:
    """Set namespaced sysctls (validated by spec.validate) through our namespaces' /proc/sys."""
    for key, value in sysctls.items():
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(str(value))


def setup(config: dict[str, Any]) -> str:
    """Everything up to (not including) pivot_root. Returns the absolute root path."""
    linux = config.get("linux") or {}
    monitor_mounted = (config.get("annotations") or {}).get(ANN_IDMAP) == "true"
    if monitor_mounted:
        # The monitor mounted the rootfs and started us in it (the dirs above its parent
        # may be closed to container root; its parent, the container's dir, is not).
        # Through the parent, so that the name crosses the self-bind prepare_root makes
        # (pivot_root refuses the copied, locked mount itself).
        os.chdir("..")
        root = os.path.join(STARTED_IN_PARENT, os.path.basename(config["root"]["path"].rstrip("/")))
    else:
        root = os.path.realpath(config["root"]["path"])
        mount_overlay(root, config.get("annotations") or {})
    if not os.path.isdir(root):
        raise FileNotFoundError(errno.ENOENT, f"rootfs {root} does not exist")
    prepare_root(root, linux.get("rootfsPropagation"))
    for m in config.get("mounts") or []:
        if monitor_mounted and is_bind(m):
            continue  # made by the monitor (bind_host_paths)
        mount_one(root, m)
    create_devices(root, linux.get("devices") or [])
    write_sysctls(linux.get("sysctl") or {})
    return root


def finish(config: dict[str, Any], root: str) -> None:
    """After the mounts: mask, protect, pivot, and make root read-only if asked."""
    linux = config.get("linux") or {}
    mask_paths(root, linux.get("maskedPaths") or [])
    readonly_paths(root, linux.get("readonlyPaths") or [])
    pivot(root)
    if (config.get("root") or {}).get("readonly"):
        sc.mount("", "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | _locked_flags("/"))
