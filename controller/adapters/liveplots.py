"""Where a running run's plot files are read from: its work dir, or what its runner reported.

Local runs: the files are read in the run's clone (``<work dir>/repo``), which the run's
code writes: every component is opened without following a symlink
(:func:`controller.runner.open_beneath`), only regular files are read (a FIFO would
block), non-blocking, and at most :data:`MAX_LIVE_FILE_BYTES` of each.

Kubernetes runs: the executors hand the chunks they take out of the pod's log
(:class:`~controller.domain.liveplots.MarkerFilter`) to :class:`ReportedPlots`, which
keeps each file's text in a directory of the service's own, beside the run's log
(``<run>.log.plots/``), under a name derived from the path (:func:`chunk_name`): nothing
the run reports chooses where anything is written. A chunk is applied only where it
continues the text kept (or at offset 0, which starts the file anew); a chunk past a gap
waits for the runner's next start of the file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

from controller import runner
from controller.domain.liveplots import MAX_LIVE_FILE_BYTES, PlotChunk, chunk_name

__all__ = ["MAX_FILES", "ReportedPlots", "read_workdir", "reported_dir"]

# Files kept for one run (a dvc.yaml declares a handful; a run's code could report more).
MAX_FILES = 256


def read_workdir(repo: Path, paths: Iterable[str]) -> dict[str, bytes]:
    """The first :data:`MAX_LIVE_FILE_BYTES` of each file under ``repo`` that exists as a
    regular file reached without a symlink; others are left out."""
    found: dict[str, bytes] = {}
    for path in paths:
        data = _read_prefix(repo, path)
        if data is not None:
            found[path] = data
    return found


def _read_prefix(root: Path, rel: str) -> bytes | None:
    try:
        fd = runner.open_beneath(root, rel, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, runner.StepFailed):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        parts: list[bytes] = []
        left = MAX_LIVE_FILE_BYTES
        while left > 0:
            piece = os.read(fd, min(left, 1024 * 1024))
            if not piece:
                break
            parts.append(piece)
            left -= len(piece)
        return b"".join(parts)
    except OSError:
        return None
    finally:
        os.close(fd)


def reported_dir(log_path: Path) -> Path:
    """Where the plot files a run's runner reported are kept: beside its log."""
    return Path(f"{log_path}.plots")


class ReportedPlots:
    """The plot files one run's runner reported, kept in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def apply(self, chunks: Iterable[PlotChunk]) -> None:
        for chunk in chunks:
            self._apply(chunk)

    def _apply(self, chunk: PlotChunk) -> None:
        target = self.directory / chunk_name(chunk.path)
        try:
            size = target.stat().st_size
        except FileNotFoundError:
            size = None
        if chunk.offset != 0 and chunk.offset != size:
            return  # a gap (a chunk lost, e.g. across a restart): wait for a new start
        end = min(chunk.offset + len(chunk.data), MAX_LIVE_FILE_BYTES)
        data = chunk.data[: max(0, end - chunk.offset)]
        if size is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            with os.scandir(self.directory) as entries:
                if sum(1 for _ in entries) >= MAX_FILES:
                    return
        if chunk.offset == 0:
            target.write_bytes(data)
        elif data:
            with target.open("ab") as out:
                out.write(data)

    def read(self, paths: Iterable[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for path in paths:
            with contextlib.suppress(OSError):
                found[path] = (self.directory / chunk_name(path)).read_bytes()[:MAX_LIVE_FILE_BYTES]
        return found

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
