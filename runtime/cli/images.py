"""Image commands: images, tag, rmi, history, image prune, commit, diff, import, export,
save, load, snapshot; pull/push/login/logout are in `registry.py`."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import IO, Any

from ..errors import CellboxError, InvalidArgument
from .common import ago, engine, human_size, print_json, print_json_line, table


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[IO[bytes]]:
    """-o FILE, or stdout when it is not a terminal (Docker refuses to write a tar to a tty)."""
    if path and path != "-":
        import os
        import stat

        try:
            special = not stat.S_ISREG(os.stat(path).st_mode)
        except FileNotFoundError:
            special = False
        if special:  # -o /dev/null, a fifo: written into, never replaced by a file (as root!)
            with open(path, "wb") as f:
                yield f
            return
        from ..atomicfile import replacing

        # No fsync, as `docker save`: a big tar; the rename still hides a half-written one.
        with replacing(path, durable=False) as f:
            yield f
        return
    if sys.stdout.isatty():
        raise InvalidArgument("cowardly refusing to write a tar to a terminal: use -o FILE or redirect")
    sys.stdout.flush()
    yield sys.stdout.buffer


@contextlib.contextmanager
def _input(path: str | None) -> Iterator[IO[bytes]]:
    if path and path != "-":
        with open(path, "rb") as f:
            yield f
        return
    yield sys.stdin.buffer


def image_inspect(img: Any) -> dict[str, Any]:
    cfg = img.config
    return {
        "Id": img.id,
        "RepoTags": list(img.refs),
        "RepoDigests": [],
        "Created": img.created,
        "Author": cfg.get("author", ""),
        "Architecture": cfg.get("architecture", ""),
        "Os": cfg.get("os", ""),
        "Size": img.size,
        "Config": cfg.get("config") or {},
        "RootFS": cfg.get("rootfs") or {},
        "Manifest": {"Digest": img.manifest_digest, "Layers": [d["digest"] for d in img.manifest.get("layers", [])]},
    }


def cmd_images(a: argparse.Namespace) -> int:
    eng = engine(a)
    imgs = eng.images.list()
    if a.quiet:
        seen = set()
        for img in imgs:
            if img.short_id not in seen:
                seen.add(img.short_id)
                print(img.id if a.no_trunc else img.short_id)
        return 0
    if a.format == "json":
        for img in imgs:
            print_json_line({"ID": img.id, "Repository": img.refs, "CreatedAt": img.created, "Size": img.size, "Digest": img.manifest_digest})
        return 0
    if a.format:
        raise InvalidArgument(f"unsupported --format {a.format!r}: use json")
    rows = []
    for img in imgs:
        for ref in img.refs or ["<none>:<none>"]:
            repo, _, tag = ref.rpartition(":") if "@" not in ref else (ref, "", "<none>")
            if "/" in tag:  # a registry port, not a tag
                repo, tag = ref, "<none>"
            rows.append([repo, tag, img.id if a.no_trunc else img.short_id, ago(img.created), human_size(img.size)])
    table(rows, ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"])
    return 0


def cmd_tag(a: argparse.Namespace) -> int:
    engine(a).images.tag(a.source, a.target)
    return 0


def cmd_rmi(a: argparse.Namespace) -> int:
    eng = engine(a)
    failed = 0
    for ref in a.images:
        try:
            for line in eng.images.rmi(ref, force=a.force):
                print(line)
        except CellboxError as e:
            sys.stderr.write(f"cellbox: {e}\n")
            failed = 1
    return failed


def cmd_history(a: argparse.Namespace) -> int:
    eng = engine(a)
    hist = eng.images.history(a.image)
    if a.format == "json":
        for h in hist:
            print_json_line(h)
        return 0
    rows = []
    for h in hist:
        created_by = h["created_by"]
        if not a.no_trunc and len(created_by) > 45:
            created_by = created_by[:44] + "…"
        ident = h.get("id", "<missing>")
        if ident != "<missing>" and not a.no_trunc:
            ident = ident.split(":", 1)[-1][:12]
        rows.append([ident, ago(h["created"]), created_by, human_size(h["size"]), h["comment"]])
    table(rows, ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"])
    return 0


def cmd_image_prune(a: argparse.Namespace) -> int:
    n = engine(a).images.prune()
    print(f"Deleted images: {n}")
    return 0


def _progress(a: argparse.Namespace, what: str = "commit") -> Any:
    """A terminal progress bar (rich) for long work; nothing when stderr is not a terminal."""
    if not sys.stderr.isatty() or getattr(a, "quiet", False):
        return None
    try:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
    except ImportError:  # no bar rather than no commit
        return None

    prog = Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        transient=True, console=Console(stderr=True),
    )  # fmt: skip
    prog.start()
    task = prog.add_task(what, total=None)

    def update(done: int, total: int | None = None, *_: Any) -> None:
        prog.update(task, completed=done, total=total)

    update.stop = prog.stop  # type: ignore[attr-defined]
    return update


class _Counting:
    """A file wrapper that reports how many bytes went through it (for progress bars)."""

    def __init__(self, f: IO[bytes], update: Any, total: int | None = None) -> None:
        self._f, self._update, self._total, self.done = f, update, total, 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.done += len(data)
        self._update(self.done, self._total)
        return data

    def write(self, data: bytes) -> int:
        n = self._f.write(data)
        self.done += len(data)
        self._update(self.done, self._total)
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


@contextlib.contextmanager
def _with_progress(a: argparse.Namespace, f: IO[bytes], what: str, total: int | None = None) -> Iterator[IO[bytes]]:
    progress = _progress(a, what)
    if progress is None:
        yield f
        return
    try:
        yield _Counting(f, progress, total)  # type: ignore[misc]
    finally:
        progress.stop()


def _size_of(f: IO[bytes]) -> int | None:
    import os

    try:
        return os.fstat(f.fileno()).st_size or None
    except (OSError, ValueError):
        return None


def cmd_commit(a: argparse.Namespace) -> int:
    eng = engine(a)
    progress = _progress(a)
    try:
        img = eng.commit(
            a.container, a.repository, message=a.message or "", author=a.author or "", changes=a.change,
            pause=a.pause, snapshot=a.snapshot, compression=a.compression, reproducible=a.reproducible,
            progress=progress,
        )  # fmt: skip
    finally:
        if progress is not None:
            progress.stop()
    print(img.id)
    return 0


def cmd_diff(a: argparse.Namespace) -> int:
    for kind, path in engine(a).diff(a.container):
        print(f"{kind} {path}")
    return 0


def cmd_import(a: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    eng = engine(a)
    if a.file == "-":
        img = eng.images.import_rootfs(sys.stdin.buffer, a.reference, changes=a.change)
    elif os.path.isdir(a.file):
        img = eng.images.import_rootfs(Path(a.file), a.reference, changes=a.change)
    else:
        with open(a.file, "rb") as f, _with_progress(a, f, "import", _size_of(f)) as src:
            img = eng.images.import_rootfs(src, a.reference, changes=a.change)
    print(img.id)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    eng = engine(a)
    with _output(a.output) as out:
        eng.export(a.container, out)
    return 0


def cmd_save(a: argparse.Namespace) -> int:
    eng = engine(a)
    with _output(a.output) as out, _with_progress(a, out, "save") as dst:
        eng.images.save(a.images, dst)
    return 0


def cmd_load(a: argparse.Namespace) -> int:
    eng = engine(a)
    with _input(a.input) as f, _with_progress(a, f, "load", _size_of(f)) as src:
        imgs = eng.images.load(src)
    for img in imgs:
        for ref in img.refs or [img.id]:
            print(f"Loaded image: {ref}")
    return 0


def cmd_snapshot(a: argparse.Namespace) -> int:
    eng = engine(a)
    if a.action == "create":
        info = eng.snapshot_create(a.container, a.message or "")
        print(info.id)
    elif a.action == "ls":
        snaps = eng.snapshots(a.container).list()
        if a.format == "json":
            for s in snaps:
                print_json_line({"ID": s.id, "Parent": s.parent, "Created": s.created, "Message": s.message, "Size": s.size})
        else:
            table([[s.id, ago(s.created), human_size(s.size), s.message] for s in snaps], ["SNAPSHOT", "CREATED", "SIZE", "MESSAGE"])
    elif a.action == "restore":
        info = eng.snapshot_restore(a.container, a.snapshot)
        print(info.id)
    elif a.action == "rm":
        snaps = eng.snapshots(a.container)
        snaps.remove(snaps.get(a.snapshot).id)
        print(a.snapshot)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("images", help="List images", usage="cellbox images [OPTIONS]")
    p.add_argument("-q", "--quiet", action="store_true", help="Only show image IDs")
    p.add_argument("--no-trunc", action="store_true", help="Don't truncate output")
    p.add_argument("--format", help="Format output: json")
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("tag", help="Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE", usage="cellbox tag SOURCE_IMAGE[:TAG] TARGET_IMAGE[:TAG]")
    p.add_argument("source")
    p.add_argument("target")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("rmi", help="Remove one or more images", usage="cellbox rmi [OPTIONS] IMAGE [IMAGE...]")
    p.add_argument("-f", "--force", action="store_true", help="Force removal of the image")
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_rmi)

    p = sub.add_parser("history", help="Show the history of an image", usage="cellbox history [OPTIONS] IMAGE")
    p.add_argument("--no-trunc", action="store_true", help="Don't truncate output")
    p.add_argument("--format", help="Format output: json")
    p.add_argument("image")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("image", help="Manage images (prune)", usage="cellbox image COMMAND")
    isub = p.add_subparsers(dest="subcommand", metavar="COMMAND")
    pp = isub.add_parser("prune", help="Remove unused images", usage="cellbox image prune [OPTIONS]")
    pp.add_argument("-f", "--force", action="store_true", help="Do not prompt for confirmation")
    pp.add_argument("-a", "--all", action="store_true", help="Accepted for Docker compatibility")
    pp.set_defaults(func=cmd_image_prune)

    p = sub.add_parser("commit", help="Create a new image from a container's changes", usage="cellbox commit [OPTIONS] CONTAINER [REPOSITORY[:TAG]]")
    p.add_argument("-a", "--author", help='Author (e.g., "Jane Doe <jane@example.com>")')
    p.add_argument("-c", "--change", action="append", default=[], help="Apply Dockerfile instruction to the created image (ENV, CMD, ENTRYPOINT, WORKDIR, USER, LABEL, EXPOSE)")
    p.add_argument("-m", "--message", help="Commit message")
    p.add_argument("-p", "--pause", type=lambda v: v.lower() not in ("false", "0", "no"), default=True, metavar="BOOL", help="Pause container during commit (default true)")
    p.add_argument("--snapshot", help="Commit this snapshot of the container instead of its current state")
    p.add_argument("--compression", choices=["gzip", "zstd", "none"], default="gzip", help="Layer compression (default gzip)")
    p.add_argument("--reproducible", action="store_true", help="Same content, same digest (sorted entries, clamped times: SOURCE_DATE_EPOCH)")
    p.add_argument("-q", "--quiet", action="store_true", help="No progress bar")
    p.add_argument("container")
    p.add_argument("repository", nargs="?")
    p.set_defaults(func=cmd_commit)

    p = sub.add_parser("diff", help="Inspect changes to files or directories on a container's filesystem", usage="cellbox diff CONTAINER")
    p.add_argument("container")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("import", help="Import the contents from a tarball or directory to create a filesystem image", usage="cellbox import [OPTIONS] file|DIR|- [REPOSITORY[:TAG]]")
    p.add_argument("-c", "--change", action="append", default=[], help="Apply Dockerfile instruction to the created image")
    p.add_argument("file")
    p.add_argument("reference", nargs="?")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="Export a container's filesystem as a tar archive", usage="cellbox export [OPTIONS] CONTAINER")
    p.add_argument("-o", "--output", help="Write to a file, instead of STDOUT")
    p.add_argument("container")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("save", help="Save one or more images to a tar archive (docker-archive)", usage="cellbox save [OPTIONS] IMAGE [IMAGE...]")
    p.add_argument("-o", "--output", help="Write to a file, instead of STDOUT")
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_save)

    p = sub.add_parser("load", help="Load an image from a tar archive (docker-archive or oci-archive)", usage="cellbox load [OPTIONS]")
    p.add_argument("-i", "--input", help="Read from tar archive file, instead of STDIN")
    p.add_argument("-q", "--quiet", action="store_true", help="Suppress the load output")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("snapshot", help="Manage a container's snapshots", usage="cellbox snapshot COMMAND CONTAINER [SNAPSHOT]")
    ssub = p.add_subparsers(dest="action", metavar="COMMAND")
    sp = ssub.add_parser("create", help="Take a snapshot of a container's filesystem", usage="cellbox snapshot create [-m MSG] CONTAINER")
    sp.add_argument("-m", "--message", help="Snapshot message")
    sp.add_argument("container")
    sp.set_defaults(func=cmd_snapshot)
    sp = ssub.add_parser("ls", help="List a container's snapshots", usage="cellbox snapshot ls CONTAINER")
    sp.add_argument("--format", help="Format output: json")
    sp.add_argument("container")
    sp.set_defaults(func=cmd_snapshot)
    for name, text in (("restore", "Return a container to a snapshot (its processes restart)"), ("rm", "Remove a snapshot")):
        sp = ssub.add_parser(name, help=text, usage=f"cellbox snapshot {name} CONTAINER SNAPSHOT")
        sp.add_argument("container")
        sp.add_argument("snapshot")
        sp.set_defaults(func=cmd_snapshot)

    from .registry import register as register_registry

    register_registry(sub)
    _ = print_json
