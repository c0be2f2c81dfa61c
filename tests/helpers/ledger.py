"""The promise fault tests check: every item terminal, one result per succeeded item,
no output file without a row."""
from __future__ import annotations

from pathlib import Path

from shared.db import session_scope
from shared.orm import ItemState, Job, JobItem


def assert_ledger_consistent(database_url: str, storage_dir: Path) -> dict[str, int]:
    with session_scope(database_url) as session:
        items = session.query(JobItem).all()
        jobs = session.query(Job).all()
    assert all(job.state.is_terminal() for job in jobs), [(j.id, j.state) for j in jobs if not j.state.is_terminal()]
    assert all(item.state.is_terminal() for item in items), [(i.job_id, i.index, i.state) for i in items if not i.state.is_terminal()]
    for item in items:
        has_output = (item.output_text is not None) + (item.output_key is not None)
        assert has_output == (1 if item.state == ItemState.SUCCEEDED else 0), (item.index, item.state)
        assert item.lease_id is None
    keys = [item.output_key for item in items if item.output_key]
    assert len(keys) == len(set(keys))
    files = {str(p.relative_to(storage_dir)) for p in Path(storage_dir).rglob("*") if p.is_file()} if Path(storage_dir).exists() else set()
    assert files == set(keys), f"files without a row: {sorted(files - set(keys))[:5]}"
    return {state.value: sum(i.state == state for i in items) for state in ItemState}
