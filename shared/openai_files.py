"""The content of OpenAI-API files, kept in storage as parts of whole lines.

A file (an uploaded batch input, a batch's output or error file) is JSON Lines of any
size, up to 50,000 lines of base64 images. Storage puts and gets whole objects, so a
file is written as parts of about `PART_BYTES`, each ending at a line end, and read
part by part: neither an upload nor a download, nor a batch writing its output, holds a
whole file in memory, on a local directory and an S3 bucket alike. Part keys derive
from the file id, so writing a file again replaces it.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.openai_orm import OpenAIFile

PART_BYTES = 4 * 1024 * 1024
PREFIX = "openai-files"


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def part_key(file_id: str, part: int) -> str:
    return f"{PREFIX}/{file_id}/{part:05d}.jsonl"


@dataclass(frozen=True)
class Written:
    bytes: int
    lines: int
    parts: int


class PartWriter:
    """Collects lines and puts a part each time `PART_BYTES` is passed; `close` puts
    the rest and says what was written."""

    def __init__(self, storage, file_id: str, part_bytes: int = PART_BYTES):
        self.storage, self.file_id, self.part_bytes = storage, file_id, part_bytes
        self._buffer: list[bytes] = []
        self._buffered = self.bytes = self.lines = self.parts = 0

    def write(self, line: bytes) -> None:
        """Add `line` as it is: with its line end (only a file's last line may lack one)."""
        self._buffer.append(line)
        self._buffered += len(line)
        self.bytes += len(line)
        self.lines += 1
        if self._buffered >= self.part_bytes:
            self._put()

    def _put(self) -> None:
        self.storage.put(part_key(self.file_id, self.parts), b"".join(self._buffer))
        self.parts += 1
        self._buffer, self._buffered = [], 0

    def close(self) -> Written:
        if self._buffer:
            self._put()
        return Written(self.bytes, self.lines, self.parts)


def write_lines(storage, file_id: str, lines: Iterable[bytes], part_bytes: int = PART_BYTES) -> Written:
    writer = PartWriter(storage, file_id, part_bytes)
    for line in lines:
        writer.write(line)
    return writer.close()


def read_parts(storage, file: OpenAIFile) -> Iterator[bytes]:
    """The file's bytes, a part at a time (what a download streams)."""
    for part in range(file.parts):
        yield storage.get(part_key(file.id, part))


def read_lines(storage, file: OpenAIFile) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, line without its end) for every line of the file."""
    number = 0
    for data in read_parts(storage, file):
        for line in data.splitlines():
            number += 1
            yield number, line


def delete_content(storage, file: OpenAIFile) -> None:
    for part in range(file.parts):
        storage.delete(part_key(file.id, part))


def remove_expired_files(session: Session, storage, now: datetime, limit: int = 500) -> int:
    """Delete files whose `expires_at` has passed: their parts, then their rows (a crash
    between the two leaves a row whose next pass deletes again). Returns how many."""
    expired = list(session.scalars(
        select(OpenAIFile).where(OpenAIFile.expires_at <= now).order_by(OpenAIFile.expires_at).limit(limit)))
    for file in expired:
        delete_content(storage, file)
        session.delete(file)
    return len(expired)
