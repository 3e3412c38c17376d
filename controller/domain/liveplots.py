"""Live plots: a running run's plot files, as its stages write them.

A local run's files are read from its work dir (:mod:`controller.adapters.liveplots`).
On Kubernetes the runner reports them through its log stream, one marker line per
chunk of a file (``runner.PlotReporter``)::

    \\x1e@mlexp-plot {"path": "dvclive/plots/metrics/loss.tsv", "offset": 120, "b64": "..."}\\n

``offset`` is where the chunk's bytes (base64: the byte count stays exact) start in the
file; a chunk at offset 0 starts the file anew (it was created or rewritten). The marker
begins with ASCII RS (``\\x1e``), which no log line of the runner's carries, and ends at
the next line end; it may stand in the middle of a line (the runner's output and its
reports share one stream), and :class:`MarkerFilter` takes it out wherever it stands, so
the stored log reads as if it had never been there.

Bounded: a marker line longer than :data:`MAX_MARKER_LINE` is dropped unread, a file's
text is kept up to :data:`MAX_LIVE_FILE_BYTES`, and the filter holds at most one marker
line in memory. Stage code can print marker lines too: they only ever describe its own
run's plots, which it could write anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

__all__ = [
    "MARKER",
    "MAX_LIVE_FILE_BYTES",
    "MAX_MARKER_LINE",
    "MarkerFilter",
    "PlotChunk",
    "chunk_name",
    "live_text",
    "parse_marker",
]

MARKER = b"\x1e@mlexp-plot "
# A marker carries at most 48 KiB of a file (64 KiB of base64) plus its path.
MAX_MARKER_LINE = 80 * 1024
# The most of one plot file read or kept while a run runs: rows past it wait for the end.
MAX_LIVE_FILE_BYTES = 8 * 1024 * 1024
MAX_PATH_CHARS = 4096
_TABLES = ("csv", "tsv")


@dataclass(frozen=True)
class PlotChunk:
    """Bytes of a plot file, from ``offset`` on, as the runner reported them."""

    path: str
    offset: int
    data: bytes


def parse_marker(payload: bytes) -> PlotChunk | None:
    """The chunk a marker's JSON (what follows :data:`MARKER`) describes, or None."""
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    path, offset, encoded = body.get("path"), body.get("offset"), body.get("b64")
    if (
        not isinstance(path, str)
        or not path
        or len(path) > MAX_PATH_CHARS
        or not isinstance(offset, int)
        or isinstance(offset, bool)
        or not 0 <= offset < MAX_LIVE_FILE_BYTES
        or not isinstance(encoded, str)
    ):
        return None
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return PlotChunk(path, offset, data)


class MarkerFilter:
    """Takes marker lines out of a byte stream fed in pieces; collects their chunks.

    Bytes that are no part of a marker come out of :meth:`feed` at once (a followed log
    does not wait for a line end); only a possible marker's start is held back until it
    is known, and a marker until its line end.
    """

    def __init__(self, held: bytes = b"") -> None:
        # The start of a marker (or of what may turn out to be one), not yet given out:
        # ``held`` resumes a stream whose earlier part another filter saw (a restart).
        self._held = held[:MAX_MARKER_LINE]
        self._dropping = False  # inside a marker line too long to keep: skip to its end

    @property
    def held(self) -> bytes:
        """What the filter holds back until more comes (at most :data:`MAX_MARKER_LINE`)."""
        return self._held

    def feed(self, data: bytes) -> tuple[bytes, list[PlotChunk]]:
        """The bytes to keep of ``data``, and the chunks of the markers it completed."""
        buffer = self._held + data
        self._held = b""
        kept = bytearray()
        chunks: list[PlotChunk] = []
        start = 0
        while start < len(buffer):
            if self._dropping:
                end = buffer.find(b"\n", start)
                if end < 0:
                    return bytes(kept), chunks
                self._dropping = False
                start = end + 1
                continue
            mark = buffer.find(MARKER[:1], start)
            if mark < 0:
                kept += buffer[start:]
                break
            kept += buffer[start:mark]
            head = buffer[mark : mark + len(MARKER)]
            if not MARKER.startswith(head):  # RS and something else: ordinary output
                kept += buffer[mark : mark + 1]
                start = mark + 1
                continue
            end = buffer.find(b"\n", mark)
            if end < 0:
                if len(buffer) - mark > MAX_MARKER_LINE:
                    self._dropping = len(head) == len(MARKER)
                    if not self._dropping:
                        kept += buffer[mark:]
                    return bytes(kept), chunks
                self._held = buffer[mark:]  # known only once more comes
                return bytes(kept), chunks
            if len(head) == len(MARKER):
                if end - mark <= MAX_MARKER_LINE:
                    chunk = parse_marker(buffer[mark + len(MARKER) : end])
                    if chunk is not None:
                        chunks.append(chunk)
                start = end + 1
            else:  # a prefix of the marker, then a line end: ordinary output
                kept += buffer[mark : end + 1]
                start = end + 1
        return bytes(kept), chunks

    def flush(self) -> bytes:
        """The end of the stream: what was held and turned out to be no marker."""
        held, self._held = self._held, b""
        self._dropping = False
        return b"" if held.startswith(MARKER) else held


def chunk_name(path: str) -> str:
    """The name a reported file's text is kept under: no path of the run's choosing."""
    return hashlib.sha256(path.encode()).hexdigest()[:32]


def live_text(path: str, data: bytes) -> str:
    """A plot file's bytes as read while it may still be written, as text to parse.

    A CSV/TSV file keeps its complete lines only: a row cut short by the writer would
    read as a row with wrong or missing values.
    """
    suffix = path.rsplit("/", 1)[-1].rpartition(".")[2].lower()
    if suffix in _TABLES:
        cut = data.rfind(b"\n")
        data = data[: cut + 1] if cut >= 0 else b""
    return data.decode(errors="replace")
