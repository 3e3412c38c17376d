"""Plan a run: the runner's spec, its credential environment, the result to report.

Pure functions: ids, paths and texts come in, plain data goes out.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping

from controller.domain.bundle import RepoSpec, is_local_url
from controller.domain.errors import InvalidInput
from controller.domain.models import Experiment, JsonValue, Run, RunResult
from controller.domain.naming import run_branch
from controller.domain.params import apply_overrides, render_params
from controller.domain.results import flat_metrics, flatten, lock_stages
from controller.domain.safeyaml import dump_yaml, load_yaml


def runner_spec(
    *,
    run: Run,
    experiment: Experiment,
    cache_dir: str | None = None,
    plot_report_seconds: float | None = None,
) -> dict[str, object]:
    """What the runner needs to run and publish ``run`` (no credentials: those are env).

    ``plot_report_seconds``: have the runner report the plot files through its log this
    often while ``dvc repro`` runs (Kubernetes: the service cannot read its work dir).
    """
    overrides = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(run.params.items()))
    return {
        "run_id": run.run_id,
        "experiment_id": experiment.experiment_id,
        "repo_url": experiment.git_url,
        "base_branch": experiment.branch,
        "base_commit": experiment.commit,
        "branch": run_branch(run.run_id),
        "files": {"params.yaml": run_params_yaml(run=run, experiment=experiment)}
        if run.params
        else {},
        "metrics_files": list(experiment.metrics_files),
        "message": f"mlexp run {run.run_id}" + (f"\n\nparams: {overrides}" if overrides else ""),
        "cache_dir": cache_dir,
        "plot_files": [path for plot in experiment.plots for path in plot.files],
        "plot_report_seconds": plot_report_seconds,
    }


def run_params_yaml(*, run: Run, experiment: Experiment) -> str:
    """The run's ``params.yaml``: the experiment's committed document with the run's
    overrides written in (records made before the document was kept: from its values)."""
    if experiment.params_document is None:
        return dump_yaml(apply_overrides(experiment.params, run.params))
    return render_params(experiment.params_document, run.params)


# Private CA certificates that travel beside a Kubernetes run's spec, by use (the runner's
# ``CA_VARIABLES`` say which variable each sets).
CA_FILES = {"git": "git-ca.crt", "s3": "s3-ca.crt"}


def credential_env(
    spec: RepoSpec, *, git_ca_bundle: str | None = None, s3_ca_bundle: str | None = None
) -> dict[str, str]:
    """The environment variables through which the runner gets its credentials (and, for a
    runner on this host, where the CA files are)."""
    env: dict[str, str] = {}
    if s3_ca_bundle:
        env["AWS_CA_BUNDLE"] = s3_ca_bundle
    if spec.git.token is not None:
        env["MLEXP_GIT_TOKEN"] = spec.git.token.get_secret_value()
        env["MLEXP_GIT_USERNAME"] = spec.git.username or "git"
    if git_ca_bundle:
        env["MLEXP_GIT_CA_BUNDLE"] = git_ca_bundle
    storage = spec.storage
    if storage is not None:
        if storage.access_key_id is not None:
            env["AWS_ACCESS_KEY_ID"] = storage.access_key_id.get_secret_value()
        if storage.secret_access_key is not None:
            env["AWS_SECRET_ACCESS_KEY"] = storage.secret_access_key.get_secret_value()
        if storage.region:
            env["AWS_DEFAULT_REGION"] = storage.region
    return env


def dvc_config(*, remote: str, url: str, endpoint_url: str | None, region: str | None) -> str:
    """The committed ``.dvc/config``: where the data goes, never how to authenticate."""
    lines = ["[core]", f"    remote = {remote}", f"['remote \"{remote}\"']", f"    url = {url}"]
    if endpoint_url:
        lines.append(f"    endpointurl = {endpoint_url}")
    if region:
        lines.append(f"    region = {region}")
    return "\n".join(lines) + "\n"


# A run's record keeps dvc.lock per stage up to this many stages (and is read with every
# listing of runs); a pipeline with more keeps none, with a warning.
MAX_LOCK_STAGES = 1_000

DVC_GITIGNORE = "/config.local\n/tmp\n/cache\n"


def run_result(
    *,
    run: Run,
    experiment: Experiment,
    commit: str,
    metrics_files: Mapping[str, str],
    warnings: list[str] | None = None,
    lock_text: str | None = None,
) -> RunResult:
    """The published run's result. A metrics file that cannot be read is no failure: its
    entry in ``metrics`` is ``{"error": …}``, and a sentence saying so goes to the
    result's ``warnings`` (and to ``warnings``, when given, for the run's log).
    ``lock_text`` is the run's ``dvc.lock``, summarised per stage."""
    found: list[str] = []
    branch = run_branch(run.run_id)
    metrics: dict[str, JsonValue] = {}
    for path, text in metrics_files.items():
        try:
            metrics[path] = _as_json(load_yaml(text, source=path))
            continue
        except InvalidInput as exc:
            error = exc.detail
        except Exception as exc:  # the run's own file: whatever it holds, it fails no run
            error = f"{path}: not readable as YAML or JSON ({type(exc).__name__}: {exc})"[:500]
        metrics[path] = {"error": error}
        found.append(f"metrics file {path} could not be read: {error}")
    stages: dict[str, JsonValue] = {}
    if lock_text is not None:
        try:
            stages = lock_stages(_as_json(load_yaml(lock_text, source="dvc.lock")))
            if len(stages) > MAX_LOCK_STAGES:  # the record is read with every listing
                found.append(
                    f"dvc.lock has {len(stages)} stages; per-stage hashes are kept for at most "
                    f"{MAX_LOCK_STAGES} (the run's branch has them all)"
                )
                stages = {}
        except Exception as exc:  # written by the run's DVC: unreadable is a warning
            found.append(f"dvc.lock could not be read: {type(exc).__name__}")
    if warnings is not None:
        warnings.extend(found)
    return RunResult(
        git_url=experiment.git_url,
        branch=branch,
        commit=commit,
        metrics=metrics,
        flat_metrics=flat_metrics(metrics),
        params=flatten(_as_json(apply_overrides(experiment.params, run.params))),
        stages=stages,
        clone_command=clone_command(experiment.git_url, branch, run.run_id),
        warnings=found,
    )


def clone_command(git_url: str, branch: str, directory: str) -> str:
    url = git_url.removeprefix("file://") if is_local_url(git_url) else git_url
    return (
        f"git clone -b {shlex.quote(branch)} {shlex.quote(url)} {shlex.quote(directory)}"
        f" && cd {shlex.quote(directory)} && dvc pull"
    )


def _as_json(value: object) -> JsonValue:
    """Metrics as JSON values (YAML may hold dates or other non-JSON scalars)."""
    return json.loads(json.dumps(value, default=str))  # type: ignore[no-any-return]
