"""Registry errors: one line each, all CellboxError so the CLI shows them as they are."""

from cellbox.runtime.errors import InvalidArgument, NotFound, RegistryError

# RegistryError is defined in cellbox.runtime.errors (callers test for it without this package).


class RegistryUnreachable(RegistryError):
    """No connection to the registry (refused, DNS, TLS, timeout)."""


class AuthError(RegistryError):
    """Authentication failed: wrong credentials or no usable challenge."""


class ManifestError(RegistryError):
    """A manifest that is not JSON, not a known type, or names missing blobs."""


class BlobUnknown(RegistryError, NotFound):
    """The registry does not have a blob the manifest names."""


class InsecureRegistry(RegistryError, InvalidArgument):
    """Plain http requested for a registry that is not local and not marked insecure."""


class RegistryTransient(RegistryError):
    """A server-side failure (5xx) that may go away on retry."""
