"""`cellbox pull|push|login|logout`: thin argparse commands over the registry API.

The CLI's images module wires them in with `register(sub)`; each handler returns an
exit code and raises CellboxError for the CLI's one-line error output.
"""

from __future__ import annotations

import argparse
import getpass
import os
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
    """Add pull, push, login and logout to an argparse subparsers object."""
    insecure_help = "allow plain http (always allowed for localhost/127.x/::1)"
    p = sub.add_parser("pull", help="download an image from a registry")
    p.add_argument("ref")
    p.add_argument("--platform", help="os/arch[/variant] (default: this machine)")
    p.add_argument("--insecure", action="store_true", help=insecure_help)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress; print the digest")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("push", help="upload an image to a registry")
    p.add_argument("ref")
    p.add_argument("--insecure", action="store_true", help=insecure_help)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress; print the digest")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("login", help="log in to a registry")
    p.add_argument("registry", nargs="?", default=os.environ.get("CELLBOX_REGISTRY", "docker.io"))
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password")
    p.add_argument("--password-stdin", action="store_true")
    p.add_argument("--insecure", action="store_true", help=insecure_help)
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("logout", help="forget the credentials for a registry")
    p.add_argument("registry", nargs="?", default="docker.io")
    p.set_defaults(func=cmd_logout)
