"""Use case: turn an experiment bundle into a versioned experiment repository.

Everything is validated before anything is written; if publishing fails,
whatever this call created (a local bare repo, a secret file) is removed again,
so a rejected bundle leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from controller.adapters import gitrepo
from controller.adapters.locations import LocationGuard, Resolver
from controller.adapters.secrets import LocalSecretStore
from controller.adapters.store import Store
from controller.domain.bundle import Profile, RepoSpec, parse_repo_json
from controller.domain.errors import InvalidBundle, InvalidPipeline, NotFound
from controller.domain.models import CreatedExperiment, Experiment, JsonValue, utcnow
from controller.domain.naming import new_id
from controller.domain.params import parse_params
from controller.domain.paths import validate_repo_path
from controller.domain.pipeline import Pipeline, parse_pipeline
from controller.domain.safeyaml import load_yaml
from controller.planning.runs import DVC_GITIGNORE, dvc_config
from controller.services.auth import Principal
from controller.settings import Settings

log = logging.getLogger("mlexp.experiments")

MAX_FILES = 500
CREDENTIALS_CACHED = 256


@dataclass(frozen=True)
class BundleUpload:
    repo_json: bytes
    dvc_yaml: bytes
    hyperparams: bytes
    files: Sequence[tuple[str, bytes]] = field(default_factory=tuple)


@dataclass(frozen=True)
class ValidBundle:
    spec: RepoSpec
    pipeline: Pipeline
    params: dict[str, JsonValue]
    params_document: str  # params.yaml as it will be committed
    files: dict[str, bytes]


class ExperimentService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        secrets: LocalSecretStore,
        profile: Profile,
        *,
        resolver: Resolver | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.secrets = secrets
        self.profile = profile
        self.locations = LocationGuard.from_settings(settings, profile, resolver)
        # Each submission re-checks its experiment's URLs, so it needs the credentials file
        # every time; the file is written once, when the experiment is created, and never
        # changes: its parsed form is kept (bounded: the least recently used goes first).
        self._credentials: OrderedDict[str, RepoSpec] = OrderedDict()
        self._credentials_lock = threading.Lock()

    def parse_repo(self, repo_json: bytes) -> RepoSpec:
        """``repo_json`` parsed, with its URLs and paths checked against the egress and
        local-path rules (resolving host names: blocking, call it off the event loop)."""
        spec = parse_repo_json(repo_json, profile=self.profile)
        self.locations.check(spec)
        return spec

    def check_locations(self, experiment_id: str) -> None:
        """Re-check an experiment's URLs before a run uses them: the settings, or what a
        host name resolves to, may have changed since it was created."""
        try:
            self.locations.check(self.credentials(experiment_id))
        except InvalidBundle as exc:
            raise InvalidBundle(f"experiment {experiment_id}: {exc.detail}") from None

    def validate(self, upload: BundleUpload) -> ValidBundle:
        """All checks, writing nothing: a bundle that passes is one DVC would run (host names
        in it are resolved, and local paths looked at, to apply the egress rules)."""
        spec = parse_repo_json(upload.repo_json, profile=self.profile)
        params_file = parse_params(upload.hyperparams, max_bytes=self.settings.max_yaml_bytes)
        params = params_file.values
        files: dict[str, bytes] = {}
        if len(upload.files) > MAX_FILES:
            raise InvalidBundle(f"at most {MAX_FILES} files are accepted")
        for name, data in upload.files:
            path = validate_repo_path(name)
            if path in files:
                raise InvalidBundle(f"file {path!r} was uploaded twice")
            if path.endswith(".dvc"):
                _check_pointer_file(path, data, limit=self.settings.max_yaml_bytes)
            files[path] = data
        pipeline = parse_pipeline(upload.dvc_yaml, files=files, params=params)
        # Last: these resolve names, the rest is pure.
        self._check_external_deps(pipeline, spec)
        self.locations.check(spec)
        return ValidBundle(
            spec=spec,
            pipeline=pipeline,
            params=params,
            params_document=params_file.document,
            files=files,
        )

    def _check_external_deps(self, pipeline: Pipeline, spec: RepoSpec) -> None:
        """URL dependencies: a host must pass the egress policy as git.url does, and
        ``remote://`` must name the one DVC remote the repository is given."""
        checked: set[str] = set()
        for dep in pipeline.external_deps:
            where = f"dvc.yaml: stage '{dep.stage}': dependency {dep.url!r}"
            if dep.remote is not None and dep.remote != spec.dvc.remote:
                raise InvalidPipeline(
                    f"{where}: the repository's only DVC remote is '{spec.dvc.remote}'",
                    stages=[dep.stage],
                )
            if dep.host is not None and dep.host not in checked:
                checked.add(dep.host)
                try:
                    self.locations.check_host(dep.host, where)
                except InvalidBundle as exc:
                    raise InvalidPipeline(exc.detail, stages=[dep.stage]) from None

    def create(self, principal: Principal, upload: BundleUpload) -> CreatedExperiment:
        bundle = self.validate(upload)
        experiment_id = new_id("exp")
        spec = bundle.spec
        created_repo = None
        git_url = spec.git.url
        dvc_url = spec.dvc.url or str(self.settings.remotes_dir / experiment_id)
        storage = spec.storage
        repo_files = dict(bundle.files)
        repo_files["dvc.yaml"] = upload.dvc_yaml
        repo_files["params.yaml"] = bundle.params_document.encode()
        repo_files[".dvc/config"] = dvc_config(
            remote=spec.dvc.remote,
            url=dvc_url,
            endpoint_url=storage.endpoint_url if storage else None,
            region=storage.region if storage else None,
        ).encode()
        repo_files[".dvc/.gitignore"] = DVC_GITIGNORE.encode()
        repo_files.setdefault(".dvcignore", b"")
        try:
            if git_url is None:
                # Inside the try: a failure from here on removes the repo again.
                created_repo = self.settings.repos_dir / f"{experiment_id}.git"
                gitrepo.init_bare(created_repo, spec.git.branch)
                git_url = str(created_repo)
            access = gitrepo.GitAccess(
                url=git_url,
                username=spec.git.username,
                token=spec.git.token.get_secret_value() if spec.git.token else None,
                ca_bundle=str(self.settings.git_ca_bundle) if self.settings.git_ca_bundle else None,
            )
            commit = gitrepo.publish(
                access,
                branch=spec.git.branch,
                files=repo_files,
                author=(spec.git.author.name, spec.git.author.email),
                message=f"mlexp experiment {experiment_id}",
                base_env=os.environ,
            )
            experiment = Experiment(
                experiment_id=experiment_id,
                owner=principal.name,
                git_url=git_url,
                branch=spec.git.branch,
                commit=commit,
                dvc_remote=spec.dvc.remote,
                dvc_url=dvc_url,
                stages=list(bundle.pipeline.order),
                metrics_files=list(bundle.pipeline.metrics_files),
                plots=list(bundle.pipeline.plots),
                artifacts=dict(bundle.pipeline.artifacts),
                params=bundle.params,
                params_document=bundle.params_document,
                created_at=utcnow(),
            )
            self.secrets.put(experiment_id, spec)
            self.store.add_experiment(experiment)
        except BaseException:
            self.secrets.delete(experiment_id)
            if created_repo is not None:
                shutil.rmtree(created_repo, ignore_errors=True)
            raise
        log.info(
            "experiment created",
            extra={"experiment_id": experiment_id, "commit": commit, "owner": principal.name},
        )
        # The pipeline's warnings go back to the caller, not into the record.
        return CreatedExperiment(**experiment.model_dump(), warnings=list(bundle.pipeline.warnings))

    def get(self, principal: Principal, experiment_id: str) -> Experiment:
        experiment = self.store.get_experiment(experiment_id)
        if experiment is None or not principal.may_see(experiment.owner):
            raise NotFound(f"experiment {experiment_id!r} does not exist")
        return experiment

    def list(self, principal: Principal, *, limit: int, offset: int) -> list[Experiment]:
        owner = None if principal.admin else principal.name
        return self.store.list_experiments(owner=owner, limit=limit, offset=offset)

    def find_by_repo(self, principal: Principal, git_url: str, branch: str) -> Experiment:
        """The newest experiment on this repository and branch (the seed's run form)."""
        for experiment in self.store.list_experiments(
            owner=None if principal.admin else principal.name, limit=100_000
        ):
            if experiment.git_url == git_url and experiment.branch == branch:
                return experiment
        raise NotFound(f"no experiment uses {git_url} (branch {branch}); create one first")

    def credentials(self, experiment_id: str) -> RepoSpec:
        with self._credentials_lock:
            cached = self._credentials.get(experiment_id)
            if cached is not None:
                self._credentials.move_to_end(experiment_id)
                return cached
        spec = self.secrets.get(experiment_id)
        if spec is None:
            raise NotFound(f"credentials of experiment {experiment_id!r} are missing")
        with self._credentials_lock:
            self._credentials[experiment_id] = spec  # RepoSpec is frozen: safe to share
            while len(self._credentials) > CREDENTIALS_CACHED:
                self._credentials.popitem(last=False)
        return spec


def _check_pointer_file(path: str, data: bytes, *, limit: int) -> None:
    """A ``.dvc`` file may point at data; an old-style one with ``cmd`` would add a stage
    that dvc.yaml's checks never saw."""
    parsed = load_yaml(data, source=path, max_bytes=limit)
    if isinstance(parsed, dict) and "cmd" in parsed:
        raise InvalidBundle(
            f"{path}: .dvc files with 'cmd' are not accepted; put stages in dvc.yaml"
        )
