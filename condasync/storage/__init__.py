"""Where a mirror writes: the Storage protocol and open_storage(), which picks the backend
(a local folder, or an S3 bucket through obstore).

May import: models, errors. Never channel/, engine/ or serve/: the engine hands storage
relative paths and bytes, nothing of the conda format.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from condasync.storage.base import (
    HASH_CHUNK,
    IN_MEMORY,
    STAGING,
    STATE_DIR,
    Data,
    Prepared,
    S3Options,
    SafetyError,
    StagedFile,
    Storage,
    describe_os_error,
    hash_file,
    joined,
    plain_relpath,
    safe_join,
)
from condasync.storage.local import LocalStorage

if TYPE_CHECKING:
    from condasync.storage.s3 import S3Storage

__all__ = [
    "HASH_CHUNK",
    "IN_MEMORY",
    "STAGING",
    "STATE_DIR",
    "Data",
    "LocalStorage",
    "Prepared",
    "S3Options",
    "SafetyError",
    "StagedFile",
    "Storage",
    "describe_os_error",
    "hash_file",
    "joined",
    "open_storage",
    "plain_relpath",
    "safe_join",
]


def open_storage(
    target: str, create: bool = True, s3: S3Options | None = None
) -> LocalStorage | S3Storage:
    """A local folder, or `s3://bucket/prefix` (credentials from the AWS_* variables)."""
    if target.startswith("s3://"):
        from condasync.storage.s3 import S3Storage  # obstore loads only when needed

        s3 = s3 or S3Options()
        return S3Storage(target, endpoint=s3.endpoint, force_path_style=s3.force_path_style)
    return LocalStorage(Path(target).expanduser(), create=create)
