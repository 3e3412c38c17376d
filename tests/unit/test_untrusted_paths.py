"""Writing into untrusted trees: the publish check, the runner's no-follow file access, the
stage environment, and the sandbox's mount plan.

The runner tests touch only a temp dir (no git, no DVC); the rest is pure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller import runner
from controller.adapters.gitrepo import check_writable
from controller.adapters.sandbox import SandboxPlan, bwrap_argv
from controller.domain.errors import InvalidBundle

# -- publish: what the tip of a branch may hold where the bundle writes ------------------

REGULAR, EXECUTABLE, SYMLINK, SUBMODULE, TREE = "100644", "100755", "120000", "160000", "040000"


def test_regular_files_and_directories_may_be_written_over() -> None:
    entries = {"src": TREE, "src/a.py": REGULAR, "run.sh": EXECUTABLE}
    check_writable(entries, ["src/a.py", "src/new/b.py", "run.sh", "new.txt"], branch="main")


@pytest.mark.parametrize(
    ("entries", "path", "words"),
    [
        ({"evil": SYMLINK}, "evil/x.txt", ["'evil'", "a symlink"]),
        ({"params.yaml": SYMLINK}, "params.yaml", ["'params.yaml'", "a symlink"]),
        ({"src": SUBMODULE}, "src/train.py", ["'src'", "a submodule"]),
        ({"notes": REGULAR}, "notes/x.txt", ["'notes'", "a file"]),
        ({"data": TREE}, "data", ["'data'", "a directory"]),
        ({"a": TREE, "a/b": SYMLINK}, "a/b/c/d.txt", ["'a/b'", "a symlink"]),
    ],
)
def test_anything_else_in_the_way_is_refused_naming_the_path(
    entries: dict[str, str], path: str, words: list[str]
) -> None:
    with pytest.raises(InvalidBundle) as refused:
        check_writable(entries, [path], branch="main")
    for word in words:
        assert word in refused.value.detail


names = st.sampled_from(["a", "b", "c"])
paths = st.lists(names, min_size=1, max_size=3).map("/".join)
modes = st.sampled_from([REGULAR, EXECUTABLE, SYMLINK, SUBMODULE, TREE])


@given(st.dictionaries(paths, modes, max_size=6), st.lists(paths, min_size=1, max_size=3))
def test_refused_exactly_when_a_prefix_is_not_a_directory_or_the_path_not_a_file(
    entries: dict[str, str], writes: list[str]
) -> None:
    def blocked(path: str) -> bool:
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            mode = entries.get("/".join(parts[:depth]))
            if mode is None:
                return False
            if depth < len(parts) and mode != TREE:
                return True
            if depth == len(parts) and mode not in (REGULAR, EXECUTABLE):
                return True
        return False

    expected = any(blocked(p) for p in writes)
    try:
        check_writable(entries, writes, branch="main")
        refused = False
    except InvalidBundle:
        refused = True
    assert refused == expected


# -- the runner: no symlink in a repo path is ever followed ------------------------------


def test_write_beneath_creates_parents_and_writes(tmp_path: Path) -> None:
    runner.write_beneath(tmp_path, "a/b/params.yaml", b"x: 1\n")
    assert (tmp_path / "a" / "b" / "params.yaml").read_bytes() == b"x: 1\n"


def test_write_beneath_refuses_a_symlinked_file(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").symlink_to(victim)
    with pytest.raises(runner.StepFailed, match="symlink"):
        runner.write_beneath(repo, "params.yaml", b"owned")
    assert victim.read_text() == "precious"


def test_write_beneath_refuses_a_symlinked_directory(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".dvc").symlink_to(outside)
    with pytest.raises(runner.StepFailed, match="symlink or not a directory"):
        runner.write_beneath(repo, ".dvc/config.local", b"[cache]\n")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("rel", ["../x", "/etc/passwd", "a/../../x", ""])
def test_write_beneath_refuses_paths_that_are_not_plain(tmp_path: Path, rel: str) -> None:
    with pytest.raises(runner.StepFailed):
        runner.write_beneath(tmp_path, rel, b"x")


def test_read_beneath_reads_files_and_refuses_links_and_oversize(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("token")
    (tmp_path / "m.json").write_text('{"acc": 1}')
    (tmp_path / "link.json").symlink_to(secret)
    (tmp_path / "big.json").write_bytes(b"x" * 100)
    (tmp_path / "dir").mkdir()
    assert runner.read_beneath(tmp_path, "m.json", 50) == b'{"acc": 1}'
    assert runner.read_beneath(tmp_path, "link.json", 50) is None
    assert runner.read_beneath(tmp_path, "big.json", 50) is None
    assert runner.read_beneath(tmp_path, "dir", 50) is None
    assert runner.read_beneath(tmp_path, "missing.json", 50) is None


def test_stages_get_no_credential_but_keep_the_rest() -> None:
    env = {
        "PATH": "/usr/bin",
        "HOME": "/tmp",
        "MLEXP_GIT_TOKEN": "t",
        "MLEXP_GIT_USERNAME": "u",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_SESSION_TOKEN": "st",
        "AWS_DEFAULT_REGION": "eu-west-1",
        **runner.git_environment({"MLEXP_GIT_TOKEN": "t"}),
    }
    stage = runner.without_credentials(env)
    assert stage["PATH"] == "/usr/bin"
    assert stage["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert not any("GIT_CONFIG" in k or k.startswith("MLEXP_GIT") for k in stage)
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & stage.keys()
    assert "t" not in stage.values()
    assert "s" not in stage.values()


def test_the_runner_can_make_itself_undumpable() -> None:
    pid = os.fork()
    if pid == 0:  # in a child, so the test process keeps its own flag
        runner.make_undumpable()
        import ctypes

        dumpable = ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
        os._exit(0 if dumpable == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# -- the sandbox's mount plan -------------------------------------------------------------


def _mounts(argv: list[str], option: str) -> list[str]:
    return [argv[i + 2] for i, arg in enumerate(argv[:-2]) if arg == option]


def test_the_sandbox_mounts_only_what_the_run_needs(tmp_path: Path) -> None:
    work, cache, venv = tmp_path / "data/work/run-1", tmp_path / "data/cache/exp-1", tmp_path / "v"
    for path in (work, cache, venv):
        path.mkdir(parents=True)
    argv = bwrap_argv(
        SandboxPlan(workdir=work, writable=[cache], toolchain=[venv], hidden=[tmp_path / "data"]),
        ["python3", "runner.py"],
    )
    assert argv[-2:] == ["python3", "runner.py"]
    assert _mounts(argv, "--bind") == [str(work), str(cache)]
    read_only = _mounts(argv, "--ro-bind")
    assert "/usr" in read_only
    assert str(venv) in read_only
    assert not any(p in ("/", "/root", "/home", str(tmp_path)) for p in read_only)
    assert "/etc/shadow" not in read_only
    for flag in ("--unshare-pid", "--unshare-ipc", "--cap-drop"):
        assert flag in argv
    assert "--die-with-parent" not in argv  # runners outlive a restart of the service


def test_hidden_paths_inside_a_mount_are_masked_before_the_runs_own_mounts(
    tmp_path: Path,
) -> None:
    tool = tmp_path / "tool"
    data = tool / "data"  # a data dir that happens to live inside a mounted toolchain path
    work = data / "work" / "run-1"
    work.mkdir(parents=True)
    tokens = tool / "tokens.yaml"
    tokens.write_text("tokens: []")
    argv = bwrap_argv(SandboxPlan(workdir=work, toolchain=[tool], hidden=[data, tokens]), ["true"])
    masked_dir = argv.index("--tmpfs", argv.index(str(tool))) + 1
    assert argv[masked_dir] == str(data)
    assert argv[argv.index(str(tokens)) - 1] == "/dev/null"
    assert argv.index(str(data)) < argv.index("--bind")  # the work dir is mounted on top
