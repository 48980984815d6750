"""One exception hierarchy for everything below the filesystem.

`fs` maps these to errno values, `tools` to messages and exit codes.
"""
from __future__ import annotations


class ModelfsError(Exception):
    """Base of every error modelfs raises on purpose."""

    exit_code = 1


class NotFound(ModelfsError):
    """A model, version, object or file does not exist."""

    exit_code = 2


class InvalidInput(ModelfsError):
    """A name, URL, size or file the user gave is not acceptable."""

    exit_code = 2


class IntegrityError(ModelfsError):
    """Stored bytes failed authentication: corrupt, truncated or tampered."""

    exit_code = 3


class AccessDenied(ModelfsError):
    """Wrong key, missing key, or a refused credential."""

    exit_code = 4


class NotGranted(AccessDenied):
    """This host holds a key pair, but the model was not granted to it (or it was revoked)."""


class BackendError(ModelfsError):
    """The store could not be reached or answered with an error."""

    exit_code = 5
