"""Project templates (``mlexp init``, ``mlexp template list``) and ``run start --follow``'s
stage progress.

Covers: the templates shipped as package data are listed with a description; ``init``
writes exactly a template's files, parse-able by the service's own checks (repo.json in
the local profile, dvc.yaml with its plots); a non-empty or non-directory target is
refused, ``--force`` writes into one; nothing is written outside the target (symlinks on
the way, links slipped in after planning, paths that climb out); ``sklearn-basic`` is the
sample bundle (client_ref.templ/ + workload_example/src/) byte for byte; ``experiment
create`` posts a bundle's own ``src/`` and keeps the sample's ``--code`` form; the progress
lines read from a streamed log.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import pytest
import yaml

from controller import templates
from controller.cli import bundle_parts, main
from controller.cli.progress import MAX_LINE, StageProgress, elapsed
from controller.domain.bundle import parse_repo_json
from controller.domain.pipeline import parse_pipeline

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = REPO_ROOT / "client_ref.templ"
SAMPLE_SRC = REPO_ROOT / "workload_example" / "src"
NAMES = ["sklearn-basic", "training-curve"]


def _init(target: Path, name: str, *extra: str) -> int:
    return main(["init", str(target), "--template", name, *extra])


# -- listing -----------------------------------------------------------------


def test_template_list_prints_each_name_and_its_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["template", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == NAMES
    assert all(len(line.split(maxsplit=1)[1]) > 20 for line in lines)
    assert main(["--json", "template", "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [entry["name"] for entry in listed] == NAMES
    assert "DVCLive" in listed[1]["description"]


def test_an_unknown_template_is_an_error_that_names_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init(tmp_path / "p", "no-such") == 1
    assert "sklearn-basic" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


# -- init writes a ready-to-post bundle ---------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_init_writes_the_template_and_the_service_accepts_it(tmp_path: Path, name: str) -> None:
    target = tmp_path / "project"
    assert _init(target, name) == 0
    written = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    template = templates.get(name)
    assert written == sorted(template.files)
    assert {"README.md", "dvc.yaml", "params.yaml", "repo.json"} <= set(written)
    assert any(path.startswith("src/") for path in written)
    for rel, content in template.files.items():
        assert (target / rel).read_bytes() == content
    readme = (target / "README.md").read_text()
    assert "mlexp experiment create" in readme
    assert "mlexp run start <experiment_id> --follow" in readme

    spec = parse_repo_json((target / "repo.json").read_bytes(), profile="local")
    assert spec.git.url is None
    parts = bundle_parts(target, [])
    files = {rel: path.read_bytes() for rel, path in parts.files}
    params = yaml.safe_load((target / "params.yaml").read_text())
    pipeline = parse_pipeline((target / "dvc.yaml").read_bytes(), files=files, params=params)
    assert pipeline.order
    assert not pipeline.warnings


def test_training_curve_declares_each_dvclive_file_as_an_uncached_output(tmp_path: Path) -> None:
    """The service reads plots and metrics from the run's commit: files, committed."""
    dvc = yaml.safe_load(templates.get("training-curve").files["dvc.yaml"])
    train = dvc["stages"]["train"]
    uncached = {
        path
        for entry in [*train["outs"], *train["metrics"]]
        if isinstance(entry, dict)
        for path, flags in entry.items()
        if flags.get("cache") is False
    }
    plotted = {path for plot in dvc["plots"] for spec in plot.values() for path in spec["y"]}
    assert "dvclive/plots/metrics/train/loss.tsv" in plotted
    assert plotted <= uncached
    assert "dvclive/metrics.json" in uncached
    assert all(spec["x"] == "step" for plot in dvc["plots"] for spec in plot.values())
    source = templates.get("training-curve").files["src/train.py"].decode()
    assert 'Live(dir="dvclive", save_dvc_exp=False, dvcyaml=None)' in source


def test_init_refuses_a_non_empty_directory_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "project"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    assert _init(target, "sklearn-basic") == 1
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


def test_init_refuses_a_file_as_the_target(tmp_path: Path) -> None:
    target = tmp_path / "project"
    target.write_text("a file")
    with pytest.raises(templates.TemplateError, match="not a directory"):
        templates.init(target, "sklearn-basic", force=True)
    assert target.read_text() == "a file"


def test_force_writes_into_a_non_empty_directory_and_keeps_other_files(tmp_path: Path) -> None:
    target = tmp_path / "project"
    (target / "src").mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    (target / "params.yaml").write_text("old: 1\n")
    assert _init(target, "training-curve", "--force") == 0
    assert (target / "notes.txt").read_text() == "mine"
    assert (target / "params.yaml").read_bytes() == templates.get("training-curve").files[
        "params.yaml"
    ]


def test_init_in_an_empty_existing_directory_needs_no_force(tmp_path: Path) -> None:
    assert _init(tmp_path, "sklearn-basic") == 0
    assert (tmp_path / "src" / "train.py").is_file()


# -- nothing is written outside DIR -------------------------------------------


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    return outside


def test_a_symlinked_directory_inside_the_target_is_not_written_through(tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    target = tmp_path / "project"
    target.mkdir()
    (target / "src").symlink_to(outside)
    with pytest.raises(templates.TemplateError, match="symbolic link"):
        templates.init(target, "sklearn-basic", force=True)
    assert list(outside.iterdir()) == []
    assert [p.name for p in target.iterdir()] == ["src"]  # refused before any write


def test_a_symlinked_file_inside_the_target_is_not_written_through(tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    (outside / "victim").write_text("keep")
    target = tmp_path / "project"
    target.mkdir()
    (target / "dvc.yaml").symlink_to(outside / "victim")
    with pytest.raises(templates.TemplateError, match="symbolic link"):
        templates.init(target, "sklearn-basic", force=True)
    assert (outside / "victim").read_text() == "keep"


def test_a_link_slipped_in_after_planning_fails_the_write(tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    target = tmp_path / "project"
    writes = templates.plan(target, templates.get("sklearn-basic"))
    target.mkdir()
    (target / "src").symlink_to(outside)
    with pytest.raises(OSError):  # ELOOP or ENOTDIR, by platform
        templates.write(target, writes)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    "rel", ["../escape.py", "/etc/passwd", "src/../../x", "a//b", "./a", "a\\b", "", "a/."]
)
def test_a_template_path_that_could_leave_the_target_is_refused(tmp_path: Path, rel: str) -> None:
    rogue = templates.Template("rogue", "climbs out", {rel: b"x"})
    with pytest.raises(templates.TemplateError, match="not a relative path"):
        templates.plan(tmp_path / "project", rogue)
    assert not (tmp_path / "project").exists()
    assert not (tmp_path / "escape.py").exists()


def test_every_shipped_path_is_plain_and_relative() -> None:
    for template in templates.templates():
        for rel in template.files:
            path = PurePosixPath(rel)
            assert not path.is_absolute()
            assert ".." not in path.parts
            assert "__pycache__" not in path.parts
            assert path.name != templates.MANIFEST


# -- sklearn-basic is the sample bundle ---------------------------------------


def _without_leading_comments(text: bytes) -> bytes:
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith(b"#"):
        lines.pop(0)
    return b"".join(lines)


def test_sklearn_basic_is_the_sample_bundle_byte_for_byte() -> None:
    """The template is a copy of client_ref.templ/ + workload_example/src/ (neither is
    package data): this keeps them from drifting. Only dvc.yaml's opening comment, which
    says where the scripts live, differs."""
    files = templates.get("sklearn-basic").files
    sources = {f"src/{p.name}": p.read_bytes() for p in sorted(SAMPLE_SRC.glob("*.py"))}
    assert {rel: content for rel, content in files.items() if rel.startswith("src/")} == sources
    assert files["params.yaml"] == (SAMPLE / "params.yaml").read_bytes()
    assert files["repo.json"] == (SAMPLE / "repo.json").read_bytes()
    assert _without_leading_comments(files["dvc.yaml"]) == _without_leading_comments(
        (SAMPLE / "dvc.yaml").read_bytes()
    )


# -- experiment create posts a bundle's src/ -----------------------------------


def test_experiment_create_posts_the_bundle_src_dir(tmp_path: Path) -> None:
    templates.init(tmp_path / "p", "sklearn-basic")
    parts = bundle_parts(tmp_path / "p", [])
    names = [name for name, _ in parts.files]
    assert names == ["src/evaluate.py", "src/prepare.py", "src/train.py"]
    assert parts.dvc_yaml == tmp_path / "p" / "dvc.yaml"
    assert parts.repo_json == tmp_path / "p" / "repo.json"
    # Naming the bundle's own src/ with --code posts it once.
    again = bundle_parts(tmp_path / "p", [tmp_path / "p" / "src"])
    assert [name for name, _ in again.files] == names


def test_the_sample_bundle_with_code_posts_as_before() -> None:
    parts = bundle_parts(SAMPLE, [SAMPLE_SRC])
    assert parts.files == [(f"src/{p.name}", p) for p in sorted(SAMPLE_SRC.glob("*.py"))]
    assert parts.params == SAMPLE / "params.yaml"


def test_a_code_dir_that_repeats_the_bundle_src_paths_is_an_error(tmp_path: Path) -> None:
    templates.init(tmp_path / "p", "sklearn-basic")
    with pytest.raises(ValueError, match="posted twice"):
        bundle_parts(tmp_path / "p", [SAMPLE_SRC])


# -- run start --follow: stage i of n --------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


LOG = """\
[mlexp 2026-01-01T00:00:00.000Z] step 1: clone experiment repository
Running stage 'train':
[mlexp 2026-01-01T00:00:01.000Z] step 4: dvc repro
[mlexp 2026-01-01T00:00:01.000Z] $ dvc repro
Stage 'prepare' is cached - skipping run, checking out outputs
Running stage 'train':
> python src/train.py
Running stage 'train':
Running stage 'evaluate':
[mlexp 2026-01-01T00:00:09.000Z] step 5: commit results
Running stage 'late':
"""


def test_progress_gives_a_line_per_stage_of_dvc_repro_with_its_place_and_the_time() -> None:
    clock = Clock()
    progress = StageProgress(["prepare", "train", "evaluate"], clock=clock)
    lines: list[str] = []
    for chunk in (LOG[i : i + 7] for i in range(0, len(LOG), 7)):  # lines split anyhow
        clock.now += 1
        lines += progress.feed(chunk)
    assert [line.split("]")[0] for line in lines] == [
        "[stage 1/3 prepare, unchanged",
        "[stage 2/3 train",
        "[stage 3/3 evaluate",
    ]
    assert all(line.split("] ")[1].startswith("00:") for line in lines)


def test_progress_counts_stages_it_was_not_told_of() -> None:
    progress = StageProgress([])
    text = "[mlexp t] step 4: dvc repro\nRunning stage 'a':\nRunning stage 'b':\n"
    assert [line.split("]")[0] for line in progress.feed(text)] == ["[stage 1/1 a", "[stage 2/2 b"]


def test_progress_ignores_an_endless_line() -> None:
    progress = StageProgress(["train"])
    assert progress.feed("[mlexp t] step 4: dvc repro\n") == []
    for _ in range(100):
        assert progress.feed("x" * MAX_LINE) == []
    assert progress.feed("Running stage 'train':\n") == []  # the end of the long line
    assert progress.feed("Running stage 'train':\n")[0].startswith("[stage 1/1 train]")


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0, "00:00"), (75.9, "01:15"), (3725, "1:02:05"), (-3, "00:00")]
)
def test_elapsed(seconds: float, shown: str) -> None:
    assert elapsed(seconds) == shown
