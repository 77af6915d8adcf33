"""`cellbox pull|push|login|logout`: their arguments, and handlers that go through the
engine (pull and push into its image store) and load the registry client only when one of
them runs.

The registry package imports `requests` (about 200 ms): `cellbox --help` and every other
command must not pay for it, so nothing here imports it at module level.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from ..errors import InvalidArgument
from .common import engine


def cmd_pull(args: argparse.Namespace) -> int:
    img = engine(args).pull(
        args.ref,
        insecure=args.insecure,
        platform=args.platform,
        progress=False if args.quiet else None,
    )
    print(
        img.manifest_digest
        if args.quiet
        else f"Digest: {img.manifest_digest}\nStatus: downloaded {args.ref}"
    )
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    digest = engine(args).push(
        args.ref, insecure=args.insecure, progress=False if args.quiet else None
    )
    print(digest if args.quiet else f"{args.ref}: digest: {digest}")
    return 0


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        if args.password:
            raise InvalidArgument("--password and --password-stdin are mutually exclusive")
        return sys.stdin.readline().rstrip("\r\n")
    if args.password:
        print(
            "WARNING! Using --password via the CLI is insecure. Use --password-stdin.",
            file=sys.stderr,
        )
        return args.password
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    raise InvalidArgument("no password given: use --password-stdin")


def cmd_login(args: argparse.Namespace) -> int:
    from ..images.registry import login, normalize_registry

    password = _password(args)
    username = args.username
    if not username:
        if not sys.stdin.isatty() or args.password_stdin:
            raise InvalidArgument("no username given: use -u USER")
        username = input("Username: ").strip()
    login(args.registry, username, password, insecure=args.insecure)
    print(f"Login Succeeded ({normalize_registry(args.registry)})")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    from ..images.registry import logout, normalize_registry

    logout(args.registry)
    print(f"Removing login credentials for {normalize_registry(args.registry)}")
    return 0


def register(sub: Any) -> None:
    """Add pull, push, login and logout to an argparse subparsers object."""
    insecure_help = "Allow plain http (always allowed for localhost/127.x/::1)"
    quiet_help = "No progress; print the digest"
    p = sub.add_parser(
        "pull",
        help="Download an image from a registry",
        usage="cellbox pull [OPTIONS] NAME[:TAG|@DIGEST]",
    )
    p.add_argument("ref", metavar="NAME[:TAG|@DIGEST]")
    p.add_argument("--platform", help="os/arch[/variant] (default: this machine)")
    p.add_argument("--insecure", action="store_true", help=insecure_help)
    p.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser(
        "push", help="Upload an image to a registry", usage="cellbox push [OPTIONS] NAME[:TAG]"
    )
    p.add_argument("ref", metavar="NAME[:TAG]")
    p.add_argument("--insecure", action="store_true", help=insecure_help)
    p.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser(
        "login", help="Log in to a registry", usage="cellbox login [OPTIONS] [SERVER]"
    )
    p.add_argument(
        "registry",
        nargs="?",
        metavar="SERVER",
        default=os.environ.get("CELLBOX_REGISTRY", "docker.io"),
    )
    p.add_argument("-u", "--username", help="Username")
    p.add_argument("-p", "--password", help="Password (insecure: use --password-stdin)")
    p.add_argument("--password-stdin", action="store_true", help="Take the password from stdin")
    p.add_argument("--insecure", action="store_true", help=insecure_help)
    p.set_defaults(func=cmd_login)

    p = sub.add_parser(
        "logout", help="Forget the credentials for a registry", usage="cellbox logout [SERVER]"
    )
    p.add_argument("registry", nargs="?", metavar="SERVER", default="docker.io")
    p.set_defaults(func=cmd_logout)
