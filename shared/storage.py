"""Where outputs live. The database row is the only thing a client sees: a file is
reachable only through the `output_key` of a succeeded item.

Keys are derived from the job id and item index only, so a retried or repeated write
replaces the same file instead of adding a second one. Every backend writes an output
whole or not at all (a local temp file renamed into place; one S3 PutObject), so a
reader never meets half an image.

`GENQ_STORAGE_URL` picks the backend: empty for the directory `GENQ_STORAGE_DIR`,
`s3://bucket/prefix` for an S3-compatible bucket (`shared.s3`).
"""
from __future__ import annotations

import mimetypes
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import urlsplit

from shared.errors import ConfigError, GenqError, NotFound

_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
CHUNK_BYTES = 64 * 1024


class OutputMissing(NotFound):
    """A row names an output the storage does not hold (removed by hand, a lost bucket)."""


class StorageUnavailable(GenqError):
    status = 503
    code = "storage_unavailable"


def output_key(job_id: str, index: int, extension: str) -> str:
    return f"jobs/{job_id}/{index:06d}.{extension}"


def check_key(key: str) -> str:
    if not _KEY_PATTERN.match(key) or ".." in key.split("/"):
        raise ValueError(f"invalid storage key {key!r}")
    return key


def content_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


@dataclass
class StoredObject:
    """An output opened for download: its chunks are read as the response is sent."""

    chunks: Iterator[bytes]
    size: int
    content_type: str


class Storage(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def open(self, key: str) -> StoredObject: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def keys(self, prefix: str = "") -> Iterator[str]: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def presigned_url(self, key: str, seconds: int) -> str | None: ...


class LocalStorage:
    """A directory on local disk; writes are atomic (temp file, fsync, rename)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise OutputMissing(f"output {key} is missing from storage") from None

    def open(self, key: str) -> StoredObject:
        try:
            handle = self._path(key).open("rb")
        except FileNotFoundError:
            raise OutputMissing(f"output {key} is missing from storage") from None
        return StoredObject(_read_chunks(handle), os.fstat(handle.fileno()).st_size, content_type(key))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every file under the directory `prefix` (ending in "/"); returns how many.
        A file that could not be deleted raises OSError (the caller tries again later);
        one another remover took first does not."""
        directory = self._path(directory_prefix(prefix).rstrip("/"))
        if not directory.is_dir():
            return 0
        count = sum(1 for path in directory.rglob("*") if path.is_file())
        shutil.rmtree(directory, onerror=_unless_gone)
        return count

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every stored file under `prefix` (temp files of an interrupted write included:
        they are what a check for left-over files must see)."""
        if not self.root.exists():
            return
        for path in sorted(self.root.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and key.startswith(prefix):
                yield key

    def presigned_url(self, key: str, seconds: int) -> None:
        """A directory has no URL of its own: the API serves the bytes."""
        return None


def _unless_gone(_function, _path, exc_info) -> None:
    if not issubclass(exc_info[0], FileNotFoundError):
        raise exc_info[1]


def directory_prefix(prefix: str) -> str:
    """A prefix that names a whole directory ("jobs/<id>/"), never a bare "" or a partial name."""
    if not prefix.endswith("/") or prefix == "/":
        raise ValueError(f"storage prefix {prefix!r} must name a directory and end in '/'")
    return prefix


def _read_chunks(handle) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk


def storage_from_settings(settings) -> Storage:
    """The backend `GENQ_STORAGE_URL` names; nothing connects until the first call."""
    url = settings.storage_url
    if not url:
        return LocalStorage(settings.storage_dir)
    parts = urlsplit(url)
    if parts.scheme == "file":
        return LocalStorage(parts.path)
    if parts.scheme == "s3":
        from shared.s3 import S3Storage

        if not parts.netloc:
            raise ConfigError(f"GENQ_STORAGE_URL={url!r} names no bucket: write s3://bucket or s3://bucket/prefix")
        return S3Storage.from_settings(parts.netloc, parts.path.strip("/"), settings)
    raise ConfigError(f"GENQ_STORAGE_URL={url!r}: use s3://bucket/prefix, file:///path, or leave it empty for GENQ_STORAGE_DIR")
