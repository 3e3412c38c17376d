"""Stage progress read from a run's log as it streams (``mlexp run start --follow``).

The runner announces its steps (``[mlexp <time>] step 4: dvc repro``); during the
``dvc repro`` step, DVC prints ``Running stage 'train':`` when a stage starts, and
``Stage 'prepare' didn't change, skipping`` or ``Stage 'prepare' is cached - skipping
run, checking out outputs`` when it does not run it. Each of these gives one short line,
``[stage 2/3 train] 00:12``: the stage's place in the experiment's stages, and the time
since the run was submitted. Only complete lines are read, and a line is looked at only
up to :data:`MAX_LINE` characters, so memory stays bounded whatever the log holds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence

__all__ = ["StageProgress", "elapsed"]

MAX_LINE = 4096
_STEP = re.compile(r"\[mlexp [^\]]*\] step \d+: (?P<title>.*)")
_RUNNING = re.compile(r"Running stage '(?P<stage>[^']+)':")
_SKIPPED = re.compile(
    r"Stage '(?P<stage>[^']+)' (?:didn't change, skipping|is cached - skipping run.*)"
)
REPRO_STEP = "dvc repro"


def elapsed(seconds: float) -> str:
    """``75`` -> ``01:15``; ``3725`` -> ``1:02:05``."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class StageProgress:
    """Feed it the log's text as it comes; it returns a progress line per stage reached."""

    def __init__(
        self,
        stages: Sequence[str],
        *,
        started: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stages = list(stages)
        self.clock = clock
        self.started = clock() if started is None else started
        self.seen: list[str] = []
        self._in_repro = False
        self._partial = ""
        self._overlong = False

    def feed(self, text: str) -> list[str]:
        lines: list[str] = []
        *complete, rest = text.split("\n")
        for piece in complete:
            line = self._partial + piece
            if not self._overlong and len(line) <= MAX_LINE:
                found = self._line(line.rstrip("\r"))
                if found:
                    lines.append(found)
            self._partial, self._overlong = "", False
        if not self._overlong:
            self._partial += rest
            if len(self._partial) > MAX_LINE:  # nothing we look for is this long
                self._partial, self._overlong = "", True
        return lines

    def _line(self, line: str) -> str | None:
        step = _STEP.match(line)
        if step:
            self._in_repro = step["title"].strip() == REPRO_STEP
            return None
        if not self._in_repro:
            return None
        running = _RUNNING.fullmatch(line)
        skipped = None if running else _SKIPPED.fullmatch(line)
        match = running or skipped
        if match is None or match["stage"] in self.seen:
            return None
        stage = match["stage"]
        self.seen.append(stage)
        number = self.stages.index(stage) + 1 if stage in self.stages else len(self.seen)
        total = max(len(self.stages), number)
        note = "" if running else ", unchanged"
        return f"[stage {number}/{total} {stage}{note}] {elapsed(self.clock() - self.started)}"
