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
