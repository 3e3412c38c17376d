"""The runner's log cap (:class:`controller.runner.CappedLog`): head and tail kept, a
marker line between, never more than the cap plus that line, whatever the chunks.

Writes go to a temporary file's descriptor, as the runner's go to its stdout.
"""

from __future__ import annotations

import re
import tempfile

from hypothesis import given
from hypothesis import strategies as st

from controller.runner import CappedLog

MARKER = re.compile(
    rb"\[mlexp\] \.\.\. (\d+) bytes of log omitted \(log_max_bytes is \d+\) \.\.\.\n"
)


def capped(chunks: list[bytes], limit: int | None) -> bytes:
    with tempfile.TemporaryFile() as out:
        log = CappedLog(out.fileno(), limit)
        for chunk in chunks:
            log.write(chunk)
        log.close()
        out.seek(0)
        return out.read()


text = st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"\n"))
lines = st.lists(st.sampled_from([b"a", b"bc\n", b"\n", b"defgh", b"0123456789\n"]), max_size=40)
chunk_lists = st.lists(st.one_of(text, lines.map(b"".join)), max_size=30)


@given(chunk_lists, st.integers(min_value=2, max_value=600))
def test_within_the_cap_the_log_is_the_output(chunks: list[bytes], limit: int) -> None:
    data = b"".join(chunks)
    if len(data) <= limit:
        assert capped(chunks, limit) == data


@given(chunk_lists, st.integers(min_value=2, max_value=600))
def test_over_the_cap_head_and_tail_are_kept_around_a_marker(
    chunks: list[bytes], limit: int
) -> None:
    data = b"".join(chunks)
    log = capped(chunks, limit)
    marker = MARKER.search(log)
    if marker is None:
        assert log == data  # nothing left out (the head may end early, at a line end)
        assert len(log) <= limit
        return
    omitted = int(marker[1])
    tail = log[marker.end() :]
    head = data[: len(data) - omitted - len(tail)]
    # The marker starts a line: after the head, and a line end of its own if needed.
    separator = b"" if head.endswith(b"\n") else b"\n"
    assert log == head + separator + marker[0] + tail
    assert data.endswith(tail)
    assert omitted > 0
    assert len(head) <= limit // 2
    assert len(head) + len(tail) <= limit
    assert len(log) <= limit + len(separator + marker[0])


def test_a_large_output_keeps_its_first_and_last_lines() -> None:
    body = [b"%08d\n" % i for i in range(200_000)]  # 1.8 MB in lines of 9 bytes
    log = capped([b"".join(body[i : i + 1000]) for i in range(0, len(body), 1000)], 90_000)
    assert len(log) < 90_000 + 100
    assert log.startswith(b"00000000\n00000001\n")
    assert log.endswith(b"00199998\n00199999\n")
    marker = MARKER.search(log)
    assert marker is not None
    head, tail = log[: marker.start()], log[marker.end() :]
    assert len(head) % 9 == 0  # whole lines on both sides of the marker
    assert len(tail) % 9 == 0
    assert int(marker[1]) == 1_800_000 - len(head) - len(tail)


def test_without_a_cap_everything_goes_through() -> None:
    chunks = [b"x" * 70_000] * 20
    assert capped(chunks, None) == b"".join(chunks)
