"""File content in storage parts: parts end at line ends, lines come back numbered, and
expired files go (content and row)."""
from __future__ import annotations

from datetime import timedelta

from shared.db import session_scope
from shared.openai_files import PartWriter, delete_content, part_key, read_lines, read_parts, remove_expired_files
from shared.openai_orm import OpenAIFile
from shared.orm import utcnow
from shared.storage import LocalStorage


def test_parts_end_at_line_ends_and_read_back_whole(tmp_path):
    storage = LocalStorage(tmp_path)
    lines = [f'{{"line": {i}, "pad": "{"x" * (i % 50)}"}}'.encode() for i in range(1000)]
    writer = PartWriter(storage, "file-a", part_bytes=4096)
    for line in lines:
        writer.write(line + b"\n")
    written = writer.close()
    assert written.lines == 1000 and written.parts > 5
    file = OpenAIFile(id="file-a", parts=written.parts)
    parts = list(read_parts(storage, file))
    assert all(part.endswith(b"\n") for part in parts) and sum(map(len, parts)) == written.bytes
    assert list(read_lines(storage, file)) == list(enumerate(lines, start=1))
    delete_content(storage, file)
    assert not any(storage.exists(part_key("file-a", part)) for part in range(written.parts))


def test_expired_files_are_removed_with_their_content(database_url, tmp_path):
    storage, now = LocalStorage(tmp_path), utcnow()
    for name, expires in (("file-old", now - timedelta(seconds=1)), ("file-new", now + timedelta(hours=1))):
        storage.put(part_key(name, 0), b"{}\n")
        with session_scope(database_url) as session:
            session.add(OpenAIFile(id=name, tenant="t", purpose="batch", filename="f", bytes=3, lines=1, parts=1,
                                   created_at=now, expires_at=expires))
    with session_scope(database_url) as session:
        assert remove_expired_files(session, storage, now) == 1
    with session_scope(database_url) as session:
        assert [f.id for f in session.query(OpenAIFile)] == ["file-new"]
    assert not storage.exists(part_key("file-old", 0)) and storage.exists(part_key("file-new", 0))
