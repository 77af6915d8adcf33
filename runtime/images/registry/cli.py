"""`cellbox pull|push|login|logout`: thin argparse commands over the registry API.

The CLI's arguments for them are in `cellbox.runtime.cli.registry` (so `cellbox --help`
does not import this package); each handler here returns an exit code and raises
CellboxError for the CLI's one-line error output.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from cellbox.runtime.errors import InvalidArgument


def _store(args: argparse.Namespace):
    from cellbox.runtime.images.store import ImageStore, default_root

    root = getattr(args, "root", None)
    return ImageStore(Path(root) / "images" if root else default_root())


def cmd_pull(args: argparse.Namespace) -> int:
    from . import pull

    img = pull(_store(args), args.ref, insecure=args.insecure, platform=args.platform,
               progress=False if args.quiet else None)
    print(img.manifest_digest if args.quiet else f"Digest: {img.manifest_digest}\n"
          f"Status: downloaded {args.ref}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from . import push

    digest = push(_store(args), args.ref, insecure=args.insecure,
                  progress=False if args.quiet else None)
    print(digest if args.quiet else f"{args.ref}: digest: {digest}")
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    from . import login, normalize_registry

    if args.password_stdin:
        if args.password:
            raise InvalidArgument("--password and --password-stdin are mutually exclusive")
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password:
        print("WARNING! Using --password via the CLI is insecure. Use --password-stdin.",
              file=sys.stderr)
        password = args.password
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        raise InvalidArgument("no password given: use --password-stdin")
    username = args.username
    if not username:
        if not sys.stdin.isatty() or args.password_stdin:
            raise InvalidArgument("no username given: use -u USER")
        username = input("Username: ").strip()
    login(args.registry, username, password, insecure=args.insecure)
    print(f"Login Succeeded ({normalize_registry(args.registry)})")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    from . import logout, normalize_registry

    logout(args.registry)
    print(f"Removing login credentials for {normalize_registry(args.registry)}")
    return 0


def register(sub: Any) -> None:
    """Add pull, push, login and logout to an argparse subparsers object.

    The definitions live in `cellbox.runtime.cli.registry`, which the `cellbox` CLI
    imports without loading this package (and `requests` with it).
    """
    from cellbox.runtime.cli.registry import register as _register

    _register(sub)
