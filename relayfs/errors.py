"""Typed errors of RelayFS's inner layers.

The catalog, tiers and job runner raise these; only ``relayfs.fs`` turns them into
``FUSEError(errno.X)`` (one table, ``ERRNO_OF``), and only ``relayfs.cli`` turns them into
one-line messages.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error RelayFS raises on purpose."""


class NotFound(RelayError):
    """No such folder, file, version or job."""


class AlreadyExists(RelayError):
    """The name is taken (also: a reserved name that already stands there)."""


class NotEmpty(RelayError):
    """A folder still holds entries."""


class ReadOnly(RelayError):
    """A committed version is immutable: no write, truncate, chmod or rename onto it."""


class InvalidName(RelayError):
    """A name that cannot be stored: reserved, not UTF-8, or with a forbidden byte."""


class NameTooLong(RelayError):
    """A name longer than 255 bytes."""


class IsADirectory(RelayError):
    """A file operation on a folder or a versioned file."""


class NotADirectory(RelayError):
    """A folder operation on something that is not a folder."""


class NotPermitted(RelayError):
    """An operation RelayFS refuses by design (symlinks, hard links, ...)."""


class NoSpace(RelayError):
    """The L2 cache filesystem is full even after evicting what may be evicted."""


class IntegrityError(RelayError):
    """Bytes did not match the SHA-256 recorded at commit; never served."""


class Unavailable(RelayError):
    """Cold bytes are needed but L3 cannot be reached right now."""
