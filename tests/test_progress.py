"""Progress lines for logs: how often, and what each says."""

from __future__ import annotations

import io

from tomosift.progress import LineProgress, format_seconds


def lines_of(interval_s: float, leave: bool = True) -> list[str]:
    stream = io.StringIO()
    for _ in LineProgress(range(4), desc="job", unit="it", interval_s=interval_s, stream=stream,
                          leave=leave):
        pass
    return stream.getvalue().splitlines()


def test_a_line_at_start_end_and_at_most_every_interval():
    first, last = lines_of(3600.0)  # nothing in between within the hour
    assert first == "job: 0/4 it (0%), started"
    assert last.startswith("job: 4/4 it (100%), ") and "it/s, done in 0 s" in last
    every = lines_of(0.0)
    assert len(every) == 5 and "left" in every[2]  # start, 3 in between, end
    assert all("left" in line for line in every[1:-1])


def test_without_leave_only_the_lines_in_between():
    assert lines_of(3600.0, leave=False) == []
    assert len(lines_of(0.0, leave=False)) == 3


def test_seconds_read_as_a_person_would():
    assert format_seconds(42.4) == "42 s"
    assert format_seconds(725) == "12 min 5 s"
    assert format_seconds(12000) == "3 h 20 min"
