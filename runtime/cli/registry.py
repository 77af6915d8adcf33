"""`cellbox pull|push|login|logout`: their arguments, and handlers that load the registry
client only when one of them runs.

The registry package imports `requests` (about 200 ms); a module inside it cannot be
imported without it, so the argument definitions live here and the handlers in
`cellbox.runtime.images.registry.cli` are looked up at call time.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any


def _handler(name: str) -> Callable[[argparse.Namespace], int]:
    """A handler that imports `images.registry.cli` and calls its `name` when it runs."""

    def run(args: argparse.Namespace) -> int:
        from ..images.registry import cli as impl

        return getattr(impl, name)(args)

    run.__name__ = run.__qualname__ = name
    return run


def register(sub: Any) -> None:
    """Add pull, push, login and logout to an argparse subparsers object."""
    insecure_help = "Allow plain http (always allowed for localhost/127.x/::1)"
    quiet_help = "No progress; print the digest"
    p = sub.add_parser("pull", help="Download an image from a registry", usage="cellbox pull [OPTIONS] NAME[:TAG|@DIGEST]")
    p.add_argument("ref", metavar="NAME[:TAG|@DIGEST]")
    p.add_argument("--platform", help="os/arch[/variant] (default: this machine)")
    p.add_argument("--insecure", action="store_true", help=insecure_help)
    p.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    p.set_defaults(func=_handler("cmd_pull"))

    p = sub.add_parser("push", help="Upload an image to a registry", usage="cellbox push [OPTIONS] NAME[:TAG]")
    p.add_argument("ref", metavar="NAME[:TAG]")
    p.add_argument("--insecure", action="store_true", help=insecure_help)
    p.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    p.set_defaults(func=_handler("cmd_push"))

    p = sub.add_parser("login", help="Log in to a registry", usage="cellbox login [OPTIONS] [SERVER]")
    p.add_argument("registry", nargs="?", metavar="SERVER", default=os.environ.get("CELLBOX_REGISTRY", "docker.io"))
    p.add_argument("-u", "--username", help="Username")
    p.add_argument("-p", "--password", help="Password (insecure: use --password-stdin)")
    p.add_argument("--password-stdin", action="store_true", help="Take the password from stdin")
    p.add_argument("--insecure", action="store_true", help=insecure_help)
    p.set_defaults(func=_handler("cmd_login"))

    p = sub.add_parser("logout", help="Forget the credentials for a registry", usage="cellbox logout [SERVER]")
    p.add_argument("registry", nargs="?", metavar="SERVER", default="docker.io")
    p.set_defaults(func=_handler("cmd_logout"))
