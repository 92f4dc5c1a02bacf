"""The error hierarchy; each error carries the exit code the CLI maps it to."""

from __future__ import annotations

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_UPSTREAM = 3
EXIT_VERIFY = 4
EXIT_LOCKED = 5
EXIT_INTERRUPTED = 130


class CondasyncError(Exception):
    """Base error: a one-line message for the user plus an exit code."""

    exit_code = EXIT_USAGE


class UsageError(CondasyncError):
    """Bad options or a bad config file."""

    exit_code = EXIT_USAGE


class UpstreamError(CondasyncError):
    """Upstream unreachable, or its repodata is missing or invalid."""

    exit_code = EXIT_UPSTREAM


class MassDeleteError(UpstreamError):
    """A run would delete more of a subdir than --max-delete allows; nothing was published."""


class LockedError(CondasyncError):
    """Another run holds the lock on the target."""

    exit_code = EXIT_LOCKED


class StorageError(CondasyncError):
    """The target cannot be written (full disk, permissions); the published tree is intact."""

    exit_code = EXIT_PARTIAL


class NotWritable(StorageError):
    """The target refuses writes (permission denied, a read-only file system, /sys): a setup
    problem for the operator, not a partial failure."""

    exit_code = EXIT_USAGE


class DownloadError(CondasyncError):
    """One package could not be fetched and verified; retried by the caller."""

    exit_code = EXIT_PARTIAL


class ChecksumMismatch(DownloadError):
    """The downloaded bytes do not match the record's size or hash."""
