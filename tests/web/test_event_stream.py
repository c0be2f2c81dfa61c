"""One connection's memory of what it sent (`Tracker`), the reads streams share
(`SharedReads`) and the event ids (`Cursor`): the rules behind "every item event exactly
once", checked on hand-made reads."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from shared.errors import InvalidRequest
from shared.orm import JobState
from web.event_reads import END, Cursor, micros
from web.event_stream import JobRead, SharedReads, Tracker

JOB = "a" * 32
SECOND = 1_000_000
T0 = micros(datetime(2026, 12, 1, tzinfo=timezone.utc))


def read(*items: tuple[float, int], state=JobState.RUNNING, done: int | None = None) -> JobRead:
    places = sorted(Cursor(T0 + int(at * SECOND), JOB, index) for at, index in items)
    end = Cursor(T0 + 100 * SECOND, JOB, END) if state.is_terminal() else None
    counts = done if done is not None else len(items)
    return JobRead(JOB, state, f'{{"done":{counts}}}', (state.value, counts),
                   [(place, f'{{"index":{place.index}}}') for place in places], end)


def sent(tracker: Tracker, *reads: JobRead) -> list[tuple[str, str]]:
    return [(name, data) for _id, name, data in tracker.events_of(list(reads))]


def items(events) -> list[str]:
    return [data for name, data in events if name == "item"]


def test_each_item_once_across_overlapping_reads():
    tracker = Tracker(Cursor(0, JOB, 0), skew=2)
    first = sent(tracker, read((1, 0), (1, 1)))
    assert items(first) == ['{"index":0}', '{"index":1}'] and ("progress", '{"done":2}') in first
    again = sent(tracker, read((1, 0), (1, 1), (2, 2)))
    assert items(again) == ['{"index":2}']


def test_an_item_committed_late_with_an_earlier_time_is_still_sent_once():
    tracker = Tracker(Cursor(0, JOB, 0), skew=2)
    sent(tracker, read((5, 3)))
    late = sent(tracker, read((4.5, 2), (5, 3)))  # another worker's commit, stamped before the cursor
    assert items(late) == ['{"index":2}']
    assert items(sent(tracker, read((4.5, 2), (5, 3)))) == []


def test_a_shared_read_reaching_further_back_resends_nothing():
    tracker = Tracker(Cursor(0, JOB, 0), skew=2)
    sent(tracker, read((1, 0)))
    sent(tracker, read((1, 0), (10, 1)))  # the cursor moved on: item 0 is below the floor now
    lagging = read((1, 0), (10, 1), (11, 2))  # read for a stream that lags behind
    assert items(sent(tracker, lagging)) == ['{"index":2}']


def test_a_resumed_stream_sends_only_what_follows_its_last_event_id():
    tracker = Tracker(Cursor(T0 + 2 * SECOND, JOB, 1), skew=2)
    events = sent(tracker, read((1, 0), (2, 0), (2, 1), (2, 2), (3, 3)))
    assert items(events) == ['{"index":2}', '{"index":3}']


def test_the_final_event_comes_once_after_the_items():
    tracker = Tracker(Cursor(0, JOB, 0), skew=2)
    final = read((1, 0), (1, 1), state=JobState.SUCCEEDED)
    events = sent(tracker, final)
    assert [name for name, _ in events] == ["item", "item", "progress", "completed"]
    assert sent(tracker, final) == []
    resumed_after_end = Tracker(final.end, skew=2)
    assert [name for name, _ in sent(resumed_after_end, final)] == ["progress"]


def test_cursors_round_trip_and_refuse_what_this_api_never_sent():
    for cursor in (Cursor(T0, JOB, 12), Cursor(T0, JOB, END), Cursor(T0, "", 0)):
        assert Cursor.parse(str(cursor)) == cursor
    assert Cursor(T0, JOB, 3) < Cursor(T0, JOB, END) < Cursor(T0 + 1, JOB, 0)
    for text in ("", "nonsense", "12-zz-1", "1-" + JOB + "--1", "1" * 18 + "-" + JOB + "-1"):
        with pytest.raises(InvalidRequest):
            Cursor.parse(text)


def test_a_shared_read_is_reused_only_if_it_began_after_the_notice_and_reaches_far_enough():
    sequence = [5]
    shared, calls = SharedReads(lambda: sequence[0]), []

    def reader(result):
        return lambda: calls.append(result) or [result]

    early = datetime(2026, 1, 1, tzinfo=timezone.utc)
    late = datetime(2026, 6, 1, tzinfo=timezone.utc)
    first = read((1, 0))
    assert shared.get(JOB, late, 5, reader(first)) == [first]
    assert shared.get(JOB, late, 5, reader(read())) == [first]  # woken by notice 5: the read began at 5
    assert shared.get(JOB, early, 5, reader(second := read((0.5, 1)))) == [second]  # needs to reach further back
    sequence[0] = 6
    assert shared.get(JOB, late, 6, reader(third := read((2, 2)))) == [third]  # a newer notice: a new read
    assert shared.get(JOB, late, None, reader(fourth := read())) == [fourth]  # a heartbeat: always a read
    assert len(calls) == 4
