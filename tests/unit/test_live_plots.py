"""Live plots: reading a running run's plot files safely, and the runner's plot reports.

Covers: :func:`read_workdir` (no symlink followed in any component, FIFOs and directories
skipped without blocking, at most 8 MB of a file), :func:`live_text` (a CSV/TSV row cut
short by its writer is left out), :class:`MarkerFilter` (marker lines taken out of a log
fed in any pieces, wherever in a line they stand; the rest of the log unchanged; bounded),
and the round trip from :class:`runner.PlotReporter` through the filter into
:class:`ReportedPlots`: a growing file, a rewritten one, a symlink the reporter refuses,
the budget. Touches only temp dirs.
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller import runner
from controller.adapters.liveplots import ReportedPlots, read_workdir
from controller.domain.liveplots import (
    MARKER,
    MAX_LIVE_FILE_BYTES,
    MAX_MARKER_LINE,
    MarkerFilter,
    PlotChunk,
    live_text,
    parse_marker,
)
from controller.domain.models import PlotSpec
from controller.domain.plots import LIVE_MISSING, plot_rows

CURVE = "dvclive/plots/metrics/train/loss.tsv"


def marker(path: str, offset: int, data: bytes) -> bytes:
    body = {"path": path, "offset": offset, "b64": base64.b64encode(data).decode()}
    return MARKER + json.dumps(body).encode() + b"\n"


def filtered(pieces: list[bytes]) -> tuple[bytes, list[PlotChunk]]:
    markers = MarkerFilter()
    kept = bytearray()
    chunks: list[PlotChunk] = []
    for piece in pieces:
        out, found = markers.feed(piece)
        kept += out
        chunks += found
    kept += markers.flush()
    return bytes(kept), chunks


# -- reading the work dir -------------------------------------------------------------------


def test_the_runner_and_the_service_agree_on_the_marker() -> None:
    assert runner.PLOT_MARKER == MARKER
    assert runner.PLOT_FILE_BYTES == MAX_LIVE_FILE_BYTES
    assert len(runner.PlotReporter._line("p" * 4000, 0, b"x" * runner.PLOT_CHUNK)) < MAX_MARKER_LINE


def test_files_are_read_beneath_the_clone_without_following_symlinks(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "dvclive").mkdir(parents=True)
    (repo / "dvclive" / "loss.tsv").write_text("step\tloss\n0\t1.0\n")
    secret = tmp_path / "secret.tsv"
    secret.write_text("step\tloss\n0\t42\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "loss.tsv").write_text("step\tloss\n0\t43\n")
    (repo / "link.tsv").symlink_to(secret)  # the file itself a link
    (repo / "dir-link").symlink_to(outside)  # a directory on the way a link
    (repo / "a-dir.tsv").mkdir()
    os.mkfifo(repo / "fifo.tsv")  # opened without O_NONBLOCK this would hang the reader
    found = read_workdir(
        repo,
        ["dvclive/loss.tsv", "link.tsv", "dir-link/loss.tsv", "a-dir.tsv", "fifo.tsv", "none.tsv"],
    )
    assert found == {"dvclive/loss.tsv": b"step\tloss\n0\t1.0\n"}


def test_at_most_eight_megabytes_of_a_file_are_read(tmp_path: Path) -> None:
    big = b"step\tloss\n" + b"1\t0.5\n" * (MAX_LIVE_FILE_BYTES // 6 + 10)
    (tmp_path / "big.tsv").write_bytes(big)
    data = read_workdir(tmp_path, ["big.tsv"])["big.tsv"]
    assert data == big[:MAX_LIVE_FILE_BYTES]


def test_a_row_being_written_is_left_out_of_a_table() -> None:
    assert live_text("a.tsv", b"step\tloss\n0\t1.0\n1\t0.") == "step\tloss\n0\t1.0\n"
    assert live_text("a.csv", b"step,lo") == ""
    assert live_text("a.json", b'[{"step": 0}') == '[{"step": 0}'  # a parse error, not a cut


def test_half_written_files_give_the_rows_so_far_or_an_error_never_a_failure() -> None:
    specs = [
        PlotSpec(id="loss", files=["a.tsv", "b.json", "c.tsv"], x="step", y={"a.tsv": ["loss"]})
    ]
    files = {
        "a.tsv": live_text("a.tsv", b"step\tloss\n0\t1.0\n1\t0.5\n2\t0."),
        "b.json": live_text("b.json", b'[{"step": 0, "loss": 1.0}, {"st'),
    }
    data = plot_rows(specs, files, missing=LIVE_MISSING)[0]["data"]
    assert isinstance(data, dict)
    assert data["a.tsv"] == {"rows": [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}]}
    assert data["b.json"]["rows"] == []  # type: ignore[index]
    assert "b.json" in data["b.json"]["error"]  # type: ignore[index]
    assert data["c.tsv"] == {"rows": [], "error": LIVE_MISSING}


# -- taking the markers out of a log ----------------------------------------------------------


def test_marker_lines_are_taken_out_wherever_they_stand() -> None:
    one, two = marker(CURVE, 0, b"step\tloss\n"), marker(CURVE, 10, b"0\t1.0\n")
    log = b"epoch 1\n" + one + b"epo" + two + b"ch 2\n\x1eRS is fine\n"
    kept, chunks = filtered([log])
    assert kept == b"epoch 1\nepoch 2\n\x1eRS is fine\n"
    assert chunks == [PlotChunk(CURVE, 0, b"step\tloss\n"), PlotChunk(CURVE, 10, b"0\t1.0\n")]


@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from([b"\x1e", b"\x1e@mlexp", b"\n", b"\x1e@mlexp-plot {}\n"]),
            st.builds(
                marker,
                st.sampled_from(["a.tsv", "b/c.json"]),
                st.integers(0, 99),
                st.binary(max_size=30),
            ),
        ),
        max_size=20,
    ),
    st.data(),
)
def test_any_split_of_a_log_filters_as_the_whole(parts: list[bytes], data: st.DataObject) -> None:
    log = b"".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(log)), max_size=8)))
    pieces = [log[a:b] for a, b in zip([0, *cuts], [*cuts, len(log)], strict=True)]
    assert filtered(pieces) == filtered([log])
    kept, chunks = filtered([log])
    assert MARKER not in kept
    expected = [m for m in parts if m.startswith(MARKER) and parse_marker(m[len(MARKER) : -1])]
    assert len(chunks) == len(expected)


def test_text_goes_through_at_once_and_only_a_possible_marker_waits() -> None:
    markers = MarkerFilter()
    assert markers.feed(b"loss 0.5 no line end yet") == (b"loss 0.5 no line end yet", [])
    assert markers.feed(b" \x1e@mlexp-pl") == (b" ", [])  # might be a marker: held
    assert markers.feed(b'ot {"path"') == (b"", [])
    assert markers.feed(b': "a", "offset": 0, "b64": "eA=="}\nmore') == (
        b"more",
        [PlotChunk("a", 0, b"x")],
    )


def test_an_overlong_marker_is_dropped_and_memory_stays_bounded() -> None:
    markers = MarkerFilter()
    kept, chunks = markers.feed(MARKER + b"x" * (MAX_MARKER_LINE + 10))
    assert (kept, chunks) == (b"", [])
    assert len(markers._held) == 0
    kept, chunks = markers.feed(b"y" * 1000 + b"\nafter\n")
    assert (kept, chunks) == (b"after\n", [])


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"path": "", "offset": 0, "b64": ""}',
        b'{"path": "a", "offset": -1, "b64": ""}',
        b'{"path": "a", "offset": true, "b64": ""}',
        b'{"path": "a", "offset": 99999999999, "b64": ""}',
        b'{"path": "a", "offset": 0, "b64": "!!"}',
        b'{"path": "a", "offset": 0}',
    ],
)
def test_a_garbled_marker_reports_nothing(payload: bytes) -> None:
    assert parse_marker(payload) is None
    assert filtered([b"a" + MARKER + payload + b"\nb\n"]) == (b"ab\n", [])


# -- the runner's reports, through the filter, into what the service keeps -------------------


def relay(reporter: runner.PlotReporter, kept: ReportedPlots) -> None:
    markers = MarkerFilter()
    stream = b"".join(reporter.poll())
    for start in range(0, len(stream), 1000):  # as a log arrives: in pieces
        out, chunks = markers.feed(stream[start : start + 1000])
        assert out == b""
        kept.apply(chunks)


def test_a_growing_file_is_reported_and_kept_as_it_grows(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    target = repo / CURVE
    target.parent.mkdir(parents=True)
    reporter = runner.PlotReporter(repo, [CURVE, "missing.tsv"])
    kept = ReportedPlots(tmp_path / "kept")
    relay(reporter, kept)
    assert kept.read([CURVE]) == {}
    text = b"step\tloss\n"
    target.write_bytes(text)
    relay(reporter, kept)
    for step in range(3):
        with target.open("ab") as out:
            out.write(f"{step}\t{1 / (step + 1)}\n".encode())
        text = target.read_bytes()
        before = reporter.budget
        relay(reporter, kept)
        assert kept.read([CURVE]) == {CURVE: text}
        assert before - reporter.budget < 200  # only what was appended
    assert reporter.poll() == []  # nothing new, nothing sent
    big = b"x" * (runner.PLOT_CHUNK * 2 + 5)
    with target.open("ab") as out:
        out.write(big)
    relay(reporter, kept)
    assert kept.read([CURVE]) == {CURVE: text + big}


def test_a_rewritten_file_is_reported_anew(tmp_path: Path) -> None:
    target = tmp_path / "curve.json"
    reporter = runner.PlotReporter(tmp_path, ["curve.json"])
    kept = ReportedPlots(tmp_path / "kept")
    rows: list[dict[str, float]] = []
    for step in range(3):  # a JSON document written whole each time: it grows, but not at its end
        rows.append({"step": step, "loss": 1 / (step + 1)})
        target.write_text(json.dumps(rows))
        relay(reporter, kept)
        assert kept.read(["curve.json"]) == {"curve.json": target.read_bytes()}
    target.write_text("[]")  # shorter
    relay(reporter, kept)
    assert kept.read(["curve.json"]) == {"curve.json": b"[]"}


def test_the_reporter_follows_no_symlink_and_keeps_its_budget(tmp_path: Path) -> None:
    secret = tmp_path / "secret.tsv"
    secret.write_text("key\tvalue\nsecret\t1\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "loss.tsv").symlink_to(secret)
    (repo / "d").symlink_to(tmp_path)
    assert runner.PlotReporter(repo, ["loss.tsv", "d/secret.tsv", "../secret.tsv"]).poll() == []
    (repo / "big.tsv").write_bytes(b"z" * 10_000)
    reporter = runner.PlotReporter(repo, ["big.tsv"], budget=5_000)
    assert reporter.poll() == []  # over the budget: nothing (a file is never half-announced)
    assert reporter.budget == 0


def test_kept_chunks_continue_the_text_or_start_it_anew(tmp_path: Path) -> None:
    kept = ReportedPlots(tmp_path / "kept")
    kept.apply([PlotChunk("a.tsv", 5, b"late")])  # a gap: nothing to continue
    assert kept.read(["a.tsv"]) == {}
    kept.apply([PlotChunk("a.tsv", 0, b"head\n"), PlotChunk("a.tsv", 5, b"1\n")])
    kept.apply([PlotChunk("a.tsv", 99, b"lost\n")])
    assert kept.read(["a.tsv"]) == {"a.tsv": b"head\n1\n"}
    kept.apply([PlotChunk("a.tsv", 0, b"new\n")])
    assert kept.read(["a.tsv"]) == {"a.tsv": b"new\n"}
    names = [p.name for p in (tmp_path / "kept").iterdir()]
    assert len(names) == 1
    assert re.fullmatch("[0-9a-f]{32}", names[0])  # no name of the run's choosing
    kept.remove()
    assert not (tmp_path / "kept").exists()


def test_a_report_does_not_break_the_log_line_it_lands_in(tmp_path: Path) -> None:
    with tempfile.TemporaryFile() as out:
        log = runner.CappedLog(out.fileno(), None)
        log.write(b"epoch 1: loss")
        log.report(marker("a.tsv", 0, b"x\n"))
        log.write(b" 0.5\n")
        assert log.at_line_start
        out.seek(0)
        assert filtered([out.read()])[0] == b"epoch 1: loss 0.5\n"


def test_a_step_ticks_while_it_runs(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    ticks: list[float] = []
    step = runner.Runner({"branch": "b"}, tmp_path)
    step.run(
        "python3", "-c", "import time; print('a', flush=True); time.sleep(0.6); print('b')",
        cwd=tmp_path, tick=lambda: ticks.append(0.0), every=0.1,
    )  # fmt: skip
    assert len(ticks) >= 3
    assert "a\nb\n" in capfd.readouterr().out
