"""The errors cellbox shows a user: one line, no traceback."""


class CellboxError(Exception):
    """An error whose message is meant for the user as it is."""

    exit_code = 125  # Docker's code for an error of the daemon/runtime itself


class NotFound(CellboxError):
    """A container, image, snapshot or blob that does not exist."""


class Conflict(CellboxError):
    """A name in use, a container in the wrong state, an image still used."""


class InvalidArgument(CellboxError):
    """Input that cannot be accepted as given."""


class RegistryError(CellboxError):
    """A registry answered in a way we cannot use (its subclasses: images/registry/errors.py).

    Here, not in the registry package, so a caller can tell it apart without importing the
    registry client (and `requests` with it)."""
