"""Processes a test session left behind: anything still running from the session's temp dir.

Every process a test starts — a service, a runner (sandboxed or not), a stage, a Job's
container driven on the host, the test cluster — runs from (cwd) or names (command
line) a path under the session's pytest basetemp, which is unique per session. So the
check does not confuse them with another session's processes on the same machine.
"""

from __future__ import annotations

import os
from pathlib import Path


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return pids


def leftovers(basetemp: Path) -> list[str]:
    """``pid: command`` of live (non-zombie) processes that belong to the session."""
    mark = str(basetemp)
    mine = _ancestors()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat[stat.rindex(")") + 2 :].split()[0] == "Z":
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                cwd = ""
        except OSError:
            continue
        if mark in command or cwd.startswith(mark):
            found.append(f"{entry.name}: {command.strip()[:200]} (cwd {cwd})")
    return sorted(found)
