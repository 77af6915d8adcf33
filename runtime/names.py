"""Container names as Docker makes and accepts them."""

from __future__ import annotations

import random
import re

from .errors import InvalidArgument

_VALID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_LEFT = (
    "brave calm eager fancy gentle happy jolly keen lucid merry nifty proud quirky "
    "serene tender upbeat vivid witty zealous bold clever daring elegant focused"
).split()
_RIGHT = (
    "curie darwin euler fermi gauss hopper hypatia kepler lovelace noether pascal "
    "ramanujan shannon turing volta wiles yalow galois hamilton banach"
).split()


def validate_name(name: str) -> None:
    if not _VALID.match(name) or len(name) > 128:
        raise InvalidArgument(f"invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")


def random_name(taken: set[str]) -> str:
    """adjective_scientist, with a number when the pair is taken."""
    rng = random.SystemRandom()
    for attempt in range(100):
        name = f"{rng.choice(_LEFT)}_{rng.choice(_RIGHT)}"
        if attempt > 10:
            name += str(rng.randint(0, 99))
        if name not in taken:
            return name
    raise InvalidArgument("could not pick a free container name")
