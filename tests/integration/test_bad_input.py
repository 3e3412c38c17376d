"""Every security rule of DESIGN.md gets a request that breaks it: refused, nothing changed.

"Nothing changed" is checked on the data dir (no repo, secret, remote or work dir
appears), on the listings (no experiment or run recorded), and on the response
(problem+json that never echoes a credential or a server path).

Issue 8's inputs are here too: values YAML cannot construct and huge integers (in
hyperparams, repo_json, both forms of /experiment/run), non-finite params, nesting
that once overflowed the stack, unbounded offsets, branch names git refuses; and the
round trip of params.yaml, byte for byte, through an experiment and a run.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from controller.adapters import gitrepo
from controller.domain.errors import ExternalError
from controller.settings import Settings
from tests.support.bundles import QUICK_DVC, create, small_parts, start
from tests.support.service import RunningService, service_in_thread

pytestmark = pytest.mark.integration

SECRET = "tok-DO-NOT-LEAK-42"


def snapshot(service: RunningService) -> tuple[list[str], int, int]:
    root = service.settings.data_dir
    files = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("state.db")
    )
    experiments = len(service.http.get("/experiments").json())
    runs = len(service.http.get("/runs").json())
    return files, experiments, runs


def assert_refused(
    service: RunningService, response: httpx.Response, status: int
) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert body["detail"]
    assert SECRET not in response.text
    assert str(service.settings.data_dir) not in response.text
    return body


def post_bundle(
    service: RunningService, parts: list[tuple[str, tuple[str, bytes]]]
) -> httpx.Response:
    return service.http.post("/experiment/create", files=parts)


def with_file(name: str, data: bytes = b"x") -> list[tuple[str, tuple[str, bytes]]]:
    return [*small_parts(QUICK_DVC), ("files", (name, data))]


def with_repo_json(raw: bytes) -> list[tuple[str, tuple[str, bytes]]]:
    return [("repo_json", ("repo.json", raw)), *small_parts(QUICK_DVC)[1:]]


def with_params(text: str) -> list[tuple[str, tuple[str, bytes]]]:
    return small_parts(QUICK_DVC, params=text)


def on_branch(branch: str) -> list[tuple[str, tuple[str, bytes]]]:
    return small_parts(QUICK_DVC, repo_json={"git": {"branch": branch}})


HUGE = "1" * 5000

# Issue 8: each was a 500 (or a 502 leaving a bare repo behind) on b1a2392.
ISSUE_8_BUNDLES = {
    "params: bad date": (with_params("x: 1\na: 2020-99-99\n"), "not valid as a date"),
    "params: 0x_": (with_params("x: 1\na: 0x_\n"), "not valid as an integer"),
    "params: !!float abc": (with_params("x: 1\na: !!float abc\n"), "not valid as a float"),
    "params: !!bool abc": (with_params("x: 1\na: !!bool abc\n"), "not valid as a boolean"),
    "params: !!timestamp xyz": (with_params("x: 1\na: !!timestamp xyz\n"), "as a date"),
    "params: bad date in JSON-ish flow": (with_params('{"x": 1, "a": 2020-99-99}'), "as a date"),
    "params: 5000-digit int": (with_params(f"x: 1\na: {HUGE}\n"), "limit of 1000 digits"),
    "params: 5000-digit int, JSON": (with_params(f'{{"x": 1, "a": {HUGE}}}'), "1000 digits"),
    "params: lone surrogate": (with_params('x: 1\na: "\\ud800"\n'), "lone surrogate"),
    "params: .inf": (with_params("x: 1\nlr: .inf\n"), "params.lr is infinity"),
    "params: -.inf": (with_params("x: 1\nlr: -.inf\n"), "params.lr is -infinity"),
    "params: .nan": (with_params("x: 1\nlr: .nan\n"), "params.lr is NaN"),
    "params: 1e999 in JSON": (with_params('{"x": 1, "lr": 1e999}'), "params.lr is infinity"),
    "repo_json: [ * 60000": (with_repo_json(b"[" * 60_000), "nesting deeper than 64"),
    "repo_json: 5000-digit int": (
        with_repo_json(b'{"git": {"branch": ' + HUGE.encode() + b"}}"),
        "limit of 1000 digits",
    ),
    "branch a/.b": (on_branch("a/.b"), "not a valid git branch name"),
    "branch main.": (on_branch("main."), "not a valid git branch name"),
    "branch x.lock/y": (on_branch("x.lock/y"), "not a valid git branch name"),
    "branch HEAD": (on_branch("HEAD"), "not a valid git branch name"),
    "branch @": (on_branch("@"), "not a valid git branch name"),
}


@pytest.mark.parametrize("case", list(ISSUE_8_BUNDLES))
def test_issue_8_bundles_are_422_and_leave_nothing(service: RunningService, case: str) -> None:
    parts, fragment = ISSUE_8_BUNDLES[case]
    before = snapshot(service)
    body = assert_refused(service, post_bundle(service, parts), 422)
    assert fragment in str(body["detail"])
    assert snapshot(service) == before
    assert not any(service.settings.repos_dir.glob("*")), "a bare repo was left behind"


def test_a_failure_after_the_bare_repo_is_made_removes_it(
    service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Path] = []
    real_init_bare = gitrepo.init_bare

    def init_then_fail(path: Path, branch: str) -> None:
        real_init_bare(path, branch)  # the real repo, then a failure as git may report one
        made.append(path)
        raise ExternalError("git init failed")

    monkeypatch.setattr(gitrepo, "init_bare", init_then_fail)
    before = snapshot(service)
    assert_refused(service, post_bundle(service, small_parts(QUICK_DVC)), 502)
    assert made, "the service did not get as far as making the repo"
    assert not made[0].exists()
    assert snapshot(service) == before


BAD_BUNDLES = {
    "unknown repo_json key": small_parts(QUICK_DVC, repo_json={"git": {"tokn": SECRET}}),
    "ext:: transport": small_parts(QUICK_DVC, repo_json={"git": {"url": "ext::sh -c id"}}),
    "option-looking url": small_parts(QUICK_DVC, repo_json={"git": {"url": "--upload-pack=id"}}),
    "credentials in url": small_parts(
        QUICK_DVC, repo_json={"git": {"url": f"https://bot:{SECRET}@git.example.com/x.git"}}
    ),
    "plain http url": small_parts(
        QUICK_DVC, repo_json={"git": {"url": "http://example.com/x.git"}}
    ),
    "absolute file name": with_file("/etc/passwd"),
    "dot-dot file name": with_file("src/../../x.py"),
    "backslash file name": with_file("src\\x.py"),
    ".git file name": with_file(".git/hooks/post-checkout"),
    ".dvc file name": with_file(".dvc/config"),
    "dvc.yaml as a file": with_file("dvc.yaml"),
    "old-style .dvc stage": with_file("data.dvc", b"cmd: touch /tmp/x\nouts:\n- path: x\n"),
    "cycle": small_parts(
        "stages:\n"
        "  a: {cmd: x, deps: [b.txt], outs: [a.txt]}\n"
        "  b: {cmd: y, deps: [a.txt], outs: [b.txt]}\n"
    ),
    "unknown stage key": small_parts("stages:\n  a: {cmd: x, outz: [a.txt]}\n"),
    "yaml alias bomb": small_parts(
        QUICK_DVC,
        params="a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ),
    "deep yaml": small_parts(QUICK_DVC, params="x: " + "[" * 500 + "]" * 500 + "\n"),
    "params not a mapping": small_parts(QUICK_DVC, params="- 1\n- 2\n"),
    "stage param missing": small_parts(QUICK_DVC, params="y: 1\n"),
    "params with a date": small_parts(QUICK_DVC, params="x: 1\nwhen: 2026-01-01\n"),
    "params with an int key": small_parts(QUICK_DVC, params="x: {1: a}\n"),
}


@pytest.mark.parametrize("case", list(BAD_BUNDLES))
def test_bad_bundles_are_refused_and_leave_nothing(service: RunningService, case: str) -> None:
    before = snapshot(service)
    body = assert_refused(service, post_bundle(service, BAD_BUNDLES[case]), 422)
    assert snapshot(service) == before
    if case == "cycle":
        assert body["stages"] == ["a", "b"] or body["stages"] == ["b", "a"]
        assert "cycle" in str(body["detail"])


def test_upload_over_the_cap_is_413(service: RunningService) -> None:
    before = snapshot(service)
    big = with_file("data/big.bin", b"0" * (service.settings.max_upload_bytes + 1))
    assert_refused(service, post_bundle(service, big), 413)

    def chunks() -> object:
        # A well-formed start, so only the size can stop the parser, and no Content-Length.
        yield b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="big"\r\n\r\n'
        for _ in range(service.settings.max_upload_bytes // 65536 + 2):
            yield b"1" * 65536

    chunked = service.http.post(
        "/experiment/create",
        content=chunks(),  # type: ignore[arg-type]
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert_refused(service, chunked, 413)
    assert snapshot(service) == before


def test_missing_parts_are_problem_json(service: RunningService) -> None:
    body = assert_refused(
        service, service.http.post("/experiment/create", files=small_parts(QUICK_DVC)[:2]), 422
    )
    assert "hyperparams_file" in str(body["detail"])


def test_bad_run_requests_record_nothing(service: RunningService) -> None:
    experiment = create(service.http, small_parts(QUICK_DVC))
    before = snapshot(service)
    cases = [
        ({"experiment_id": experiment["experiment_id"], "params": {"y": 1}}, 422),
        ({"experiment_id": experiment["experiment_id"], "params": {"x.y": 1}}, 422),
        ({"experiment_id": experiment["experiment_id"], "resource": "sts/Bad Name"}, 422),
        ({"experiment_id": experiment["experiment_id"], "resource": "job"}, 422),
        ({"experiment_id": experiment["experiment_id"], "surprise": True}, 422),
        ({"experiment_id": "exp-0000000000"}, 404),
        ({}, 422),
    ]
    for payload, status in cases:
        assert_refused(service, service.http.post("/experiment/run", json=payload), status)
    assert_refused(service, service.http.post("/experiment/run", content=b"{not json"), 422)
    assert snapshot(service) == before


def test_bad_values_in_both_run_forms_are_422(service: RunningService) -> None:
    experiment = create(service.http, small_parts(QUICK_DVC))
    experiment_id = str(experiment["experiment_id"])
    before = snapshot(service)
    bodies = [
        '{"x": Infinity}',
        '{"x": -Infinity}',
        '{"x": NaN}',
        '{"x": 1e999}',
        '{"x": [1, {"y": NaN}]}',
        f'{{"x": {HUGE}}}',
        '{"x": "\\ud800"}',
    ]
    for params in bodies:
        body = f'{{"experiment_id": "{experiment_id}", "params": {params}}}'
        response = service.http.post(
            "/experiment/run", content=body, headers={"content-type": "application/json"}
        )
        assert_refused(service, response, 422)
        seed = {"experiment_id": experiment_id, "params": params}
        form = service.http.post(
            "/experiment/run", data=seed, files={"repo_json": ("repo.json", b"{}")}
        )
        assert_refused(service, form, 422)
    # The seed form's repo_json goes through the same loader as the bundle's.
    for raw in (b"[" * 60_000, b'{"git": {"branch": ' + HUGE.encode() + b"}}"):
        form = service.http.post("/experiment/run", files={"repo_json": ("repo.json", raw)})
        assert_refused(service, form, 422)
    form = service.http.post(
        "/experiment/run", files={"repo_json": ("r.json", b'{"git": {"branch": "main."}}')}
    )
    assert "not a valid git branch name" in str(assert_refused(service, form, 422)["detail"])
    assert snapshot(service) == before


def test_offsets_are_bounded_in_the_schema(service: RunningService) -> None:
    experiment = create(service.http, small_parts(QUICK_DVC))
    run_id = start(service.http, experiment["experiment_id"])
    assert service.wait_run(run_id)["state"] == "succeeded"
    huge = str(10**20 - 1)
    for path in ("/runs", "/experiments"):
        assert_refused(service, service.http.get(path, params={"offset": huge}), 422)
        assert_refused(service, service.http.get(path, params={"offset": 1_000_001}), 422)
        assert service.http.get(path, params={"offset": 1_000_000}).json() == []
    logs = f"/runs/{run_id}/logs"
    for follow in ("false", "true"):
        response = service.http.get(
            logs, params={"offset": "99999999999999999999", "follow": follow}
        )
        body = assert_refused(service, response, 422)
        assert "offset" in json.dumps(body)
        assert_refused(service, service.http.get(logs, params={"offset": 2**62 + 1}), 422)
    assert service.http.get(logs, params={"offset": 2**62}).status_code == 200


def git_show(git_dir: object, revision: str) -> bytes:
    return subprocess.run(
        ["git", "--git-dir", str(git_dir), "show", revision], check=True, capture_output=True
    ).stdout


UPLOADED_PARAMS = """\
# Hyperparameters: this comment, the key order and every spelling are kept.
zeta: 3          # not sorted first
x: 1
lr: 1e-10
hex_text: "0x1F"
octal: 0o17
nested: [[1, 2], [3, [4, 5]]]
deep:
  list:
  - a
  - 1.0
alpha: "yes"
"""


def test_params_yaml_is_the_uploaded_document_and_a_run_changes_only_its_override(
    service: RunningService,
) -> None:
    experiment = create(service.http, small_parts(QUICK_DVC, params=UPLOADED_PARAMS))
    git_dir, commit = experiment["git_url"], str(experiment["commit"])
    assert git_show(git_dir, f"{commit}:params.yaml") == UPLOADED_PARAMS.encode()
    shown = service.http.get(f"/experiments/{experiment['experiment_id']}").json()
    assert shown["params_document"] == UPLOADED_PARAMS
    assert shown["params"]["lr"] == 1e-10
    assert shown["params"]["hex_text"] == "0x1F"
    assert list(shown["params"]) == [
        "zeta", "x", "lr", "hex_text", "octal", "nested", "deep", "alpha"
    ]  # fmt: skip

    run_id = start(service.http, experiment["experiment_id"], x=5)
    run = service.wait_run(run_id)
    assert run["state"] == "succeeded", service.http.get(f"/runs/{run_id}/logs").text
    seen = git_show(git_dir, f"runs/{run_id}:params.yaml").decode()
    assert seen == UPLOADED_PARAMS.replace("\nx: 1\n", "\nx: 5\n")
    result = run["result"]
    assert isinstance(result, dict)
    assert result["metrics"]["m.json"] == {"x": 5}


def test_uploaded_json_params_are_committed_as_uploaded(service: RunningService) -> None:
    uploaded = '{"x": 1, "lr": 1e-10, "s": "0x1F", "n": [[1], {"b": null}]}\n'
    experiment = create(service.http, small_parts(QUICK_DVC, params=uploaded))
    committed = git_show(experiment["git_url"], f"{experiment['commit']}:params.yaml")
    assert committed == uploaded.encode()


def test_unknown_routes_and_ids_are_problem_json(service: RunningService) -> None:
    assert_refused(service, service.http.get("/runs/run-0000000000"), 404)
    assert_refused(service, service.http.get("/experiments/nope"), 404)
    assert_refused(service, service.http.get("/no/such/route"), 404)


def test_tokens_gate_every_endpoint(settings: Settings, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "tokens:\n"
        "  - {token: alice-0123456789abcdef, name: alice, namespaces: [team-a]}\n"
        "  - {token: bob-0123456789abcdefgh, name: bob, namespaces: [team-b]}\n"
    )
    secured = settings.model_copy(update={"tokens_file": tokens})
    with service_in_thread(secured) as service:
        http = service.http
        assert_refused(service, http.get("/experiments"), 401)
        assert_refused(
            service, http.get("/experiments", headers={"Authorization": "Bearer nope"}), 401
        )
        alice = {"Authorization": "Bearer alice-0123456789abcdef"}
        bob = {"Authorization": "Bearer bob-0123456789abcdefgh"}
        response = http.post("/experiment/create", files=small_parts(QUICK_DVC), headers=alice)
        assert response.status_code == 201, response.text
        experiment_id = response.json()["experiment_id"]
        assert response.json()["owner"] == "alice"
        # Another token neither sees nor runs alice's experiment.
        assert_refused(service, http.get(f"/experiments/{experiment_id}", headers=bob), 404)
        assert http.get("/experiments", headers=bob).json() == []
        run = http.post("/experiment/run", json={"experiment_id": experiment_id}, headers=bob)
        assert_refused(service, run, 404)
        assert http.get("/healthz").status_code == 200  # liveness needs no token


def test_credentials_never_come_back(service: RunningService) -> None:
    repo_json = {
        "git": {"branch": "main"},
        "storage": {"access_key_id": SECRET, "secret_access_key": SECRET},
    }
    experiment = create(service.http, small_parts(QUICK_DVC, repo_json=repo_json))
    assert SECRET not in json.dumps(experiment)
    assert SECRET not in service.http.get(f"/experiments/{experiment['experiment_id']}").text
    assert SECRET not in service.http.get("/openapi.json").text
