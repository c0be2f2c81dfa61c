"""The states of a job and of an item, and which of them are final. A module of its own,
free of SQLAlchemy, so that the HTTP client and the CLI can use the same facts."""
from __future__ import annotations

import enum


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return self in TERMINAL_JOB_STATES


class ItemState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return self in TERMINAL_ITEM_STATES


TERMINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
OPEN_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)  # a job whose pending items may be claimed
UNFINISHED_JOB_STATES = (*OPEN_JOB_STATES, JobState.CANCELLING)
TERMINAL_ITEM_STATES = frozenset({ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED})
TERMINAL = frozenset(state.value for state in TERMINAL_JOB_STATES)  # as the API spells them
