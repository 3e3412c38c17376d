"""Use cases of the model registry: register a run's model, promote a version to a stage,
promote the best run, and the registry's view — kept in the experiment repository as
GTO's git tags (:mod:`controller.domain.registry`), so ``gto`` and ``dvc get`` read it.

Writes to one artifact are serialised in this process (so two promotions at once get
distinct ``n``); a tag push that loses to another writer (another service, ``gto``) is
retried after reading the tags again: with the next ``n``, or the next version when the
caller named none (a named version taken meanwhile is a conflict, 409).
"""

from __future__ import annotations

import logging
import os
import shlex
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel, ConfigDict, Field

from controller.adapters import gittags
from controller.adapters.gitrepo import GitAccess
from controller.adapters.store import Store
from controller.domain import registry as reg
from controller.domain.bundle import is_local_url
from controller.domain.errors import Conflict, InvalidBundle, InvalidInput, NotFound
from controller.domain.models import Experiment, JsonValue, Run, RunState
from controller.domain.paths import validate_repo_path
from controller.domain.registry import ArtifactView, StageView, VersionView
from controller.domain.results import Goal, metric_number, rank
from controller.services.auth import Principal
from controller.services.events import Event as Notice
from controller.services.events import EventBus
from controller.services.experiments import ExperimentService
from controller.services.runs import RunService
from controller.settings import Settings

log = logging.getLogger("mlexp.registry")

PUSH_ATTEMPTS = 5
LOCK_STRIPES = 64
MAX_RUNS_MATCHED = 10_000  # the runs of an experiment looked at to name a version's run
GOALS: dict[str, Goal] = {"max": "max", "maximize": "max", "min": "min", "minimize": "min"}


class RegistryView(BaseModel):
    model_config = ConfigDict(frozen=True)

    experiment_id: str
    git_url: str = Field(description="The experiment repository (no credentials).")
    artifacts: list[ArtifactView]


class Promotion(BaseModel):
    model_config = ConfigDict(frozen=True)

    artifact: str
    version: VersionView
    stage: StageView
    registered: bool = Field(description="The call registered the version (promote-best).")
    assigned: bool = Field(
        description="The call made an assignment tag; false when the version already was "
        "the stage's current one (nothing changed)."
    )
    metric: str | None = Field(default=None, description="promote-best: the metric ranked.")
    value: JsonValue = Field(default=None, description="promote-best: the best run's value.")


class RegistryService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        experiments: ExperimentService,
        runs: RunService,
        events: EventBus | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.experiments = experiments
        self.runs = runs
        self.events = events
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]

    # -- use cases ---------------------------------------------------------------

    def register(
        self,
        principal: Principal,
        run_id: str,
        artifact: str,
        version: str | None = None,
        path: str | None = None,
    ) -> VersionView:
        """Tag the run's commit ``<artifact>@<version>`` (GTO's next version if None)."""
        run = self.runs.get(principal, run_id)
        reg.check_artifact_name(artifact)
        wanted = str(reg.parse_version(version)) if version is not None else None
        experiment = self.experiments.get(principal, run.experiment_id)
        artifact_path = self._artifact_path(experiment, artifact, path)
        commit = _succeeded_commit(run)
        with self._locked(experiment, artifact), self._repo(experiment) as repo:
            view = register_version(
                repo, repo.tags(), experiment, run, commit, artifact, wanted, artifact_path
            )
        enriched = self._enrich(principal, experiment, view)
        registered = next(v for v in enriched.versions if v.commit == commit and v.active)
        self._publish("model.registered", experiment, artifact, registered)
        return registered

    def promote(
        self, principal: Principal, experiment_id: str, artifact: str, version: str, stage: str
    ) -> Promotion:
        """Assign ``stage`` to a registered version (``<artifact>#<stage>#<n>``)."""
        experiment = self.experiments.get(principal, experiment_id)
        reg.check_artifact_name(artifact)
        reg.check_stage(stage)
        wanted = str(reg.parse_version(version))
        with self._locked(experiment, artifact), self._repo(experiment) as repo:
            view = build(repo.tags(), artifact)
            found = next((v for v in view.versions if v.version == wanted), None) if view else None
            if view is None or found is None:
                raise NotFound(f"{artifact} has no version {wanted}; register it first")
            if not found.active:
                raise Conflict(f"{artifact} {wanted} was deregistered")
            run_id = reg.message_fields(found.message).get("run")
            view, assigned = assign_stage(repo, artifact, found, stage, run_id=run_id)
        return self._promotion(principal, experiment, view, wanted, stage, assigned, False)

    def promote_best(
        self,
        principal: Principal,
        experiment_id: str,
        artifact: str,
        metric: str,
        goal: str,
        stage: str,
        sweep_id: str | None = None,
    ) -> Promotion:
        """Register (if its commit has no version yet) and promote the best succeeded run
        by ``metric`` (ties: the earliest finished)."""
        experiment = self.experiments.get(principal, experiment_id)
        reg.check_artifact_name(artifact)
        reg.check_stage(stage)
        if goal not in GOALS:
            raise InvalidInput(f"goal: one of {', '.join(GOALS)}")
        succeeded = self._runs(principal, experiment, sweep_id)
        if not succeeded:
            where = f"sweep {sweep_id}" if sweep_id else f"experiment {experiment_id}"
            raise Conflict(f"{where} has no succeeded run to promote")
        best = rank(succeeded, metric, GOALS[goal])[0]
        value = best.result.flat_metrics.get(metric) if best.result else None
        if metric_number(value) is None:
            raise InvalidInput(f"metric: no succeeded run has a numeric {metric!r}")
        commit = _succeeded_commit(best)
        with self._locked(experiment, artifact), self._repo(experiment) as repo:
            tags = repo.tags()
            view = build(tags, artifact)
            registered = view is None or not _has_version(view, commit)
            if registered:
                # The path: dvc.yaml's, else the one the artifact's versions were registered with.
                known = next((v.path for v in view.versions if v.path), None) if view else None
                path = known if known and artifact not in experiment.artifacts else None
                artifact_path = path or self._artifact_path(experiment, artifact, None)
                view = register_version(
                    repo, tags, experiment, best, commit, artifact, None, artifact_path
                )
            assert view is not None
            version = _version_on(view, commit)
            found = next(v for v in view.versions if v.version == version)
            view, assigned = assign_stage(repo, artifact, found, stage, run_id=best.run_id)
        promotion = self._promotion(
            principal, experiment, view, version, stage, assigned, registered
        )
        if registered:
            self._publish("model.registered", experiment, artifact, promotion.version)
        return promotion.model_copy(update={"metric": metric, "value": value})

    def registry(self, principal: Principal, experiment_id: str) -> RegistryView:
        experiment = self.experiments.get(principal, experiment_id)
        with self._repo(experiment) as repo:
            tags = repo.tags()
        view = RegistryView(
            experiment_id=experiment.experiment_id,
            git_url=experiment.git_url,
            artifacts=list(reg.build_view(tags).values()),
        )
        return self._enrich_all(principal, experiment, view)

    # -- helpers -----------------------------------------------------------------

    def _artifact_path(self, experiment: Experiment, artifact: str, path: str | None) -> str:
        if path is not None:
            try:
                return validate_repo_path(path)
            except InvalidBundle as exc:
                raise InvalidInput(f"path: {exc.detail}") from None
        spec = experiment.artifacts.get(artifact)
        if spec is None:
            raise InvalidInput(
                f"artifact {artifact!r} is not in the artifacts section of dvc.yaml; "
                "give its 'path'",
                errors=[{"loc": "path", "msg": "required", "type": "missing"}],
            )
        return spec.path

    def _runs(
        self, principal: Principal, experiment: Experiment, sweep_id: str | None
    ) -> list[Run]:
        return self.store.list_runs(
            experiment_id=experiment.experiment_id,
            states=[RunState.SUCCEEDED],
            owner=None if principal.admin else principal.name,
            sweep_id=sweep_id,
            limit=MAX_RUNS_MATCHED,
        )

    @contextmanager
    def _locked(self, experiment: Experiment, artifact: str) -> Iterator[None]:
        key = f"{experiment.experiment_id}\0{artifact}".encode()
        with self._locks[zlib.crc32(key) % LOCK_STRIPES]:
            yield

    @contextmanager
    def _repo(self, experiment: Experiment) -> Iterator[gittags.TagRepo]:
        spec = self.experiments.credentials(experiment.experiment_id)
        ca = self.settings.git_ca_bundle
        access = GitAccess(
            url=experiment.git_url,
            username=spec.git.username,
            token=spec.git.token.get_secret_value() if spec.git.token else None,
            ca_bundle=str(ca) if ca else None,
        )
        tagger = (spec.git.author.name, spec.git.author.email)
        with gittags.TagRepo(access, base_env=os.environ, tagger=tagger) as repo:
            yield repo

    def _promotion(
        self,
        principal: Principal,
        experiment: Experiment,
        view: ArtifactView,
        version: str,
        stage: str,
        assigned: bool,
        registered: bool,
    ) -> Promotion:
        enriched = self._enrich(principal, experiment, view)
        promotion = Promotion(
            artifact=view.name,
            version=next(v for v in enriched.versions if v.version == version),
            stage=enriched.stages[stage],
            registered=registered,
            assigned=assigned,
        )
        if assigned:
            self._publish("model.promoted", experiment, view.name, promotion)
        return promotion

    def _publish(
        self, kind: str, experiment: Experiment, artifact: str, what: VersionView | Promotion
    ) -> None:
        """``model.registered`` (a version) or ``model.promoted`` (a promotion); the subject
        is the tag that says it (``wine-model@v1.2.0``, ``wine-model#prod#3``)."""
        if self.events is None:
            return
        tag = what.stage.tag if isinstance(what, Promotion) else what.tag
        self.events.publish(
            Notice(
                type=kind,
                subject=tag,
                owner=experiment.owner,
                experiment_id=experiment.experiment_id,
                data={"artifact": artifact, **what.model_dump(mode="json")},
            )
        )

    def _enrich(
        self, principal: Principal, experiment: Experiment, view: ArtifactView
    ) -> ArtifactView:
        full = RegistryView(
            experiment_id=experiment.experiment_id, git_url=experiment.git_url, artifacts=[view]
        )
        return self._enrich_all(principal, experiment, full).artifacts[0]

    def _enrich_all(
        self, principal: Principal, experiment: Experiment, view: RegistryView
    ) -> RegistryView:
        """Each version and stage with its run (the one whose result is the tag's commit),
        that run's metrics, and the ``dvc get`` command that fetches the artifact."""
        by_commit: dict[str, Run] = {}
        for run in self._runs(principal, experiment, None):
            if run.result is not None:
                by_commit.setdefault(run.result.commit, run)
        artifacts = []
        for artifact in view.artifacts:
            spec = experiment.artifacts.get(artifact.name)
            default_path = spec.path if spec else None
            paths = {v.version: v.path or default_path for v in artifact.versions}
            versions = [
                v.model_copy(update=_run_fields(experiment, by_commit, paths, v))
                for v in artifact.versions
            ]
            stages = {
                name: s.model_copy(update=_run_fields(experiment, by_commit, paths, s))
                for name, s in artifact.stages.items()
            }
            artifacts.append(artifact.model_copy(update={"versions": versions, "stages": stages}))
        return view.model_copy(update={"artifacts": artifacts})


# -- steps (module functions: a test can hand them a repository that loses races) ------


def register_version(
    repo: gittags.TagRepo,
    tags: list[reg.TagRecord],
    experiment: Experiment,
    run: Run,
    commit: str,
    artifact: str,
    wanted: str | None,
    path: str,
) -> ArtifactView:
    """Register ``commit`` (``wanted``, or GTO's next version); a push that finds the tag
    taken is a conflict for a named version, and a try of the next one otherwise."""
    for _ in range(PUSH_ATTEMPTS):
        view = build(tags, artifact)
        if view is not None and _has_version(view, commit):
            raise Conflict(
                f"run {run.run_id}'s commit is registered already as {artifact} "
                f"{_version_on(view, commit)}"
            )
        versions = view.versions if view else []
        known = {v.version for v in versions}
        version = wanted or reg.next_version(v.version for v in versions if v.active)
        while wanted is None and version in known:  # a deregistered version's name
            version = str(reg.parse_version(version).bump_patch())
        if version in known:
            raise Conflict(f"{artifact} {version} is registered already")
        message = reg.register_message(artifact, version, run_id=run.run_id, path=path)
        if repo.push_tag(reg.register_tag(artifact, version), commit, message):
            log.info(
                "version registered",
                extra={"experiment_id": experiment.experiment_id, "run_id": run.run_id,
                       "artifact": artifact, "version": version},
            )  # fmt: skip
            registered = build(repo.local_tags(), artifact)
            assert registered is not None
            return registered
        if wanted is not None:
            raise Conflict(f"{artifact} {version} is registered already")
        tags = repo.tags()  # another writer took that version: the next one
    raise Conflict(f"{artifact}: other writers kept taking the next version; try again")


def assign_stage(
    repo: gittags.TagRepo,
    artifact: str,
    version: VersionView,
    stage: str,
    *,
    run_id: str | None,
) -> tuple[ArtifactView, bool]:
    """The assignment, unless the version is the stage's current one already."""
    tags = repo.local_tags()
    for _ in range(PUSH_ATTEMPTS):
        view = build(tags, artifact)
        current = view.stages.get(stage) if view else None
        if view is not None and current is not None and current.version == version.version:
            return view, False
        counter = reg.next_counter((t.name for t in tags), artifact)
        tag = reg.assign_tag(artifact, stage, counter)
        message = reg.assign_message(artifact, stage, version.version, run_id=run_id)
        if repo.push_tag(tag, version.commit, message):
            log.info("stage assigned", extra={"tag": tag, "version": version.version})
            assigned = build(repo.local_tags(), artifact)
            assert assigned is not None
            return assigned, True
        tags = repo.tags()  # lost a race for this n: read again, take the next
    raise Conflict(f"{artifact}: other writers kept taking the next tag; try again")


def _run_fields(
    experiment: Experiment,
    by_commit: dict[str, Run],
    paths: dict[str, str | None],
    entry: VersionView | StageView,
) -> dict[str, object]:
    run = by_commit.get(entry.commit)
    path = paths.get(entry.version)
    return {
        "run_id": run.run_id if run else None,
        "metrics": dict(run.result.flat_metrics) if run and run.result else {},
        "get_command": get_command(experiment.git_url, path, entry.tag) if path else None,
    }


def build(tags: list[reg.TagRecord], artifact: str) -> ArtifactView | None:
    return reg.build_view(t for t in tags if _named(t.name, artifact)).get(artifact)


def _named(tag: str, artifact: str) -> bool:
    return tag.startswith((f"{artifact}@", f"{artifact}#"))


def _succeeded_commit(run: Run) -> str:
    if run.state != RunState.SUCCEEDED or run.result is None:
        raise Conflict(f"run {run.run_id} is {run.state}; only a succeeded run can be registered")
    return run.result.commit


def _has_version(view: ArtifactView, commit: str) -> bool:
    return any(v.commit == commit and v.active for v in view.versions)


def _version_on(view: ArtifactView, commit: str) -> str:
    return next(v.version for v in view.versions if v.commit == commit and v.active)


def get_command(git_url: str, path: str, tag: str) -> str:
    """``dvc get`` of the artifact at a registry tag (a local repo as its plain path)."""
    url = git_url.removeprefix("file://") if is_local_url(git_url) else git_url
    return f"dvc get {shlex.quote(url)} {shlex.quote(path)} --rev {shlex.quote(tag)}"
