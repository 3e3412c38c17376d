"""``mlexp``: start the service, and drive it over HTTP.

    mlexp serve [--host H] [--port P] [--data-dir D]
    mlexp experiment create BUNDLE_DIR [--code DIR ...]
    mlexp experiment list | show ID
    mlexp run start EXPERIMENT_ID [--set key=value ...] [--resource R] [--namespace N]
                    [--wait | --follow]     (--follow: the log, and a line per stage on stderr)
    mlexp run list [--experiment ID] [--state S]
    mlexp run show ID | logs ID [--follow] | wait ID | cancel ID [--no-wait]
    mlexp sweep start EXPERIMENT_ID --grid KEY=V1,V2 ... [--max-parallel N] [--follow]
    mlexp sweep show ID | list | cancel ID                        (controller.cli.sweeps)
    mlexp compare EXPERIMENT_ID --metric M [--format table|csv|json]
    mlexp compare-runs RUN_A RUN_B                                (controller.cli.compare)
    mlexp register RUN_ID --artifact NAME | promote EXP ARTIFACT --stage S (--version V | --best)
    mlexp registry EXPERIMENT_ID                                  (controller.cli.registry)
    mlexp demo        # the sample bundle, end to end, on a service of its own
    mlexp init DIR [--template NAME] [--force] | template list  (controller.cli.templates)

The client commands talk to ``--url`` (env ``MLEXP_URL``, default
http://127.0.0.1:8080) with ``--token`` (env ``MLEXP_TOKEN``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import httpx
import yaml

from controller.cli import common
from controller.cli.progress import StageProgress
from controller.client import ApiError, JsonObject, MlexpClient
from controller.services.auth import is_loopback

DEFAULT_URL = "http://127.0.0.1:8080"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# -- serve -------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.server import server_config
    from controller.logs import configure_logging
    from controller.services.container import StartupError, preflight
    from controller.settings import load_settings

    for name, value in (("HOST", args.host), ("PORT", args.port), ("DATA_DIR", args.data_dir)):
        if value is not None:
            os.environ[f"MLEXP_{name}"] = str(value)
    settings = load_settings()
    if settings.tokens_file is None and not is_loopback(settings.host):
        print(
            f"error: refusing to listen on {settings.host} without a tokens file "
            "(set MLEXP_TOKENS_FILE, see config.templ/tokens.yaml)",
            file=sys.stderr,
        )
        return 2
    try:
        preflight(settings)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The server of api.server (header deadline, connection and request caps), not
    # plain uvicorn; the app itself loads the same settings in its lifespan.
    config = server_config(settings, "api:app")
    # After uvicorn's own logging setup (done by its Config): its lines get our format too.
    configure_logging(settings.log_level, settings.log_format)
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 3


# -- experiments -------------------------------------------------------------


class BundleFiles(NamedTuple):
    repo_json: Path
    dvc_yaml: Path
    params: Path
    files: list[tuple[str, Path]]


def bundle_parts(bundle: Path, code: Sequence[Path]) -> BundleFiles:
    """The files of a bundle folder, and code files named by path relative to each dir's parent.

    The bundle's own ``src/`` (as ``mlexp init`` writes it) is posted too when present,
    besides the ``--code`` dirs; a repo path given twice is an error.
    """
    params = next(
        (bundle / n for n in ("params.yaml", "params.json") if (bundle / n).is_file()), None
    )
    if params is None:
        raise ValueError(f"{bundle}: no params.yaml or params.json")
    directories = list(code)
    own = bundle / "src"
    if own.is_dir() and not any(_same_dir(own, directory) for directory in directories):
        directories.insert(0, own)
    files: list[tuple[str, Path]] = []
    origin: dict[str, Path] = {}
    for directory in directories:
        if not directory.is_dir():
            raise ValueError(f"--code {directory}: not a directory")
        for path in sorted(directory.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                name = path.relative_to(directory.parent).as_posix()
                if name in origin:
                    raise ValueError(f"{name} would be posted twice: {origin[name]} and {path}")
                origin[name] = path
                files.append((name, path))
    return BundleFiles(bundle / "repo.json", bundle / "dvc.yaml", params, files)


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def cmd_experiment_create(args: argparse.Namespace) -> int:
    parts = bundle_parts(args.bundle, args.code)
    if args.repo_json:
        parts = parts._replace(repo_json=args.repo_json)
    experiment = _client(args).create_experiment(**parts._asdict())
    _print(
        args, experiment, f"created {experiment['experiment_id']}: stages {experiment['stages']}"
    )
    # On stderr, so that --json output stays one document.
    warnings = experiment.get("warnings")
    for warning in warnings if isinstance(warnings, list) else []:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_experiment_list(args: argparse.Namespace) -> int:
    experiments = _client(args).list_experiments()
    if args.json:
        _dump(experiments)
    for exp in [] if args.json else experiments:
        print(f"{exp['experiment_id']}  {exp['created_at']}  {exp['git_url']}  {exp['branch']}")
    return 0


def cmd_experiment_show(args: argparse.Namespace) -> int:
    _dump(_client(args).get_experiment(args.experiment_id))
    return 0


# -- runs --------------------------------------------------------------------


def parse_set(values: Sequence[str]) -> dict[str, object]:
    """``train.C=0.5`` → {"train.C": 0.5}; values are read as YAML scalars."""
    params: dict[str, object] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key=value")
        params[key] = yaml.safe_load(raw) if raw else ""
    return params


def cmd_run_start(args: argparse.Namespace) -> int:
    client = _client(args)
    progress: StageProgress | None = None
    if args.follow:
        # Stage i of n: n from the experiment; the clock starts at submission.
        stages = client.get_experiment(args.experiment_id).get("stages")
        progress = StageProgress([str(s) for s in stages] if isinstance(stages, list) else [])
    run = client.start_run(
        args.experiment_id,
        params=parse_set(args.set),
        resource=args.resource,
        namespace=args.namespace,
    )
    run_id = str(run["run_id"])
    if not (args.wait or args.follow):
        _print(args, run, f"queued {run_id}")
        return 0
    if progress is not None:
        # The log on stdout as it is; a line per stage on stderr, after the log up to it.
        for text in client.follow_logs(run_id):
            sys.stdout.write(text)
            sys.stdout.flush()
            for line in progress.feed(text):
                print(line, file=sys.stderr, flush=True)
    final = client.wait(run_id)
    report_run(final)
    return 0 if final["state"] == "succeeded" else 1


def report_run(run: JsonObject) -> None:
    print(
        f"run {run['run_id']}: {run['state']}"
        + (f" ({run['reason']})" if run.get("reason") else "")
    )
    result = run.get("result")
    if isinstance(result, dict):
        for path, values in dict(result.get("metrics") or {}).items():
            print(f"  metrics {path}: {json.dumps(values)}")
        print(f"  branch {result['branch']} at {result['commit']}")
        print(f"  get the results: {result['clone_command']}")


def cmd_run_list(args: argparse.Namespace) -> int:
    runs = _client(args).list_runs(experiment_id=args.experiment, state=args.state)
    if args.json:
        _dump(runs)
    for run in [] if args.json else runs:
        print(f"{run['run_id']}  {run['state']:<9}  {run['experiment_id']}  {run['created_at']}")
    return 0


def cmd_run_show(args: argparse.Namespace) -> int:
    _dump(_client(args).get_run(args.run_id))
    return 0


def cmd_run_logs(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.follow:
        for text in client.follow_logs(args.run_id):
            sys.stdout.write(text)
            sys.stdout.flush()
    else:
        sys.stdout.write(client.logs(args.run_id))
    return 0


def cmd_run_wait(args: argparse.Namespace) -> int:
    run = _client(args).wait(args.run_id, timeout=args.timeout)
    report_run(run)
    return 0 if run["state"] == "succeeded" else 1


def cmd_run_cancel(args: argparse.Namespace) -> int:
    run = _client(args).cancel_run(args.run_id, wait=not args.no_wait)
    state = str(run["state"])
    if run.get("cancel_requested") and state in ("queued", "running"):
        state = "cancel requested"
    print(f"run {run['run_id']}: {state}")
    return 0


# -- demo --------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """Start a service, post the sample bundle, run it, print metrics and the clone command."""
    root = Path.cwd()
    bundle, code = root / "client_ref.templ", root / "workload_example" / "src"
    if not bundle.is_dir() or not code.is_dir():
        raise ValueError("run `mlexp demo` from the repository root (client_ref.templ/ not found)")
    port = _free_port()
    data_dir = Path(args.data_dir).resolve()
    env = dict(
        os.environ, MLEXP_DATA_DIR=str(data_dir), MLEXP_PORT=str(port), MLEXP_HOST="127.0.0.1"
    )
    env.setdefault("MLEXP_LOG_LEVEL", "WARNING")  # the run's own log is what the demo shows
    print(f"==> starting mlexp-ctrl on 127.0.0.1:{port} (data dir {data_dir})")
    server = subprocess.Popen([sys.executable, "-m", "controller.cli", "serve"], env=env)
    try:
        client = MlexpClient(f"http://127.0.0.1:{port}")
        _wait_healthy(client, server)
        print("==> creating the experiment from client_ref.templ/ and workload_example/src/")
        experiment = client.create_experiment(**bundle_parts(bundle, [code])._asdict())
        stages = " -> ".join(experiment["stages"])
        print(f"    {experiment['experiment_id']}: stages {stages}")
        print(f"==> starting a run with train.C={args.C}")
        run = client.start_run(str(experiment["experiment_id"]), params={"train.C": args.C})
        for text in client.follow_logs(str(run["run_id"])):
            sys.stdout.write(text)
        final = client.wait(str(run["run_id"]))
        print("==> result")
        report_run(final)
        print("==> to see it in the dashboard (its charts, its log), serve the demo's data dir:")
        print(f"    mlexp serve --data-dir {shlex.quote(str(data_dir))}")
        print(f"    then open http://127.0.0.1:8080/ui#/runs/{final['run_id']}")
        return 0 if final["state"] == "succeeded" else 1
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_healthy(
    client: MlexpClient, server: subprocess.Popen[bytes], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise OSError(f"the service exited with {server.returncode}")
        try:
            client.health()
            return
        except (httpx.HTTPError, ApiError):  # not up yet
            time.sleep(0.1)
    raise TimeoutError("the service did not become healthy")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- plumbing ----------------------------------------------------------------


_client = common.client
_print = common.show
_dump = common.dump


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlexp", description="mlexp-ctrl service and client")
    parser.add_argument("--url", default=os.environ.get("MLEXP_URL", DEFAULT_URL))
    parser.add_argument("--token", default=os.environ.get("MLEXP_TOKEN"))
    parser.add_argument("--json", action="store_true", help="print JSON")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="start the service (uvicorn, one worker)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--data-dir")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="run the sample bundle end to end on a service of its own")
    demo.add_argument("--data-dir", default="data/demo")
    demo.add_argument("--C", type=float, default=0.5, help="train.C for the run")
    demo.set_defaults(func=cmd_demo)

    exp = sub.add_parser("experiment", help="experiments").add_subparsers(
        required=True, metavar="ACTION"
    )
    create = exp.add_parser(
        "create", help="post a bundle folder (repo.json, dvc.yaml, params.yaml, src/)"
    )
    create.add_argument("bundle", type=Path)
    create.add_argument(
        "--code", type=Path, action="append", default=[], help="a dir of code files"
    )
    create.add_argument("--repo-json", type=Path, help="use this repo.json instead")
    create.set_defaults(func=cmd_experiment_create)
    exp.add_parser("list").set_defaults(func=cmd_experiment_list)
    show = exp.add_parser("show")
    show.add_argument("experiment_id")
    show.set_defaults(func=cmd_experiment_show)

    run = sub.add_parser("run", help="runs").add_subparsers(required=True, metavar="ACTION")
    start = run.add_parser("start", help="queue a run")
    start.add_argument("experiment_id")
    start.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    start.add_argument("--resource", default="local")
    start.add_argument("--namespace")
    start.add_argument("--wait", action="store_true", help="wait for the run to end")
    start.add_argument(
        "--follow",
        action="store_true",
        help="stream the log until the run ends; a line per stage (i of n, elapsed) on stderr",
    )
    start.set_defaults(func=cmd_run_start)
    listing = run.add_parser("list")
    listing.add_argument("--experiment")
    listing.add_argument("--state")
    listing.set_defaults(func=cmd_run_list)
    show = run.add_parser("show")
    show.add_argument("run_id")
    show.set_defaults(func=cmd_run_show)
    cancel = run.add_parser("cancel")
    cancel.add_argument("run_id")
    cancel.add_argument(
        "--no-wait", action="store_true", help="answer once asked, not once the run has stopped"
    )
    cancel.set_defaults(func=cmd_run_cancel)
    logs = run.add_parser("logs")
    logs.add_argument("run_id")
    logs.add_argument("--follow", "-f", action="store_true")
    logs.set_defaults(func=cmd_run_logs)
    wait = run.add_parser("wait")
    wait.add_argument("run_id")
    wait.add_argument("--timeout", type=float, default=3600)
    wait.set_defaults(func=cmd_run_wait)

    # Later nouns, one module each (imported here: they import this package's common).
    from controller.cli import compare, registry, sweeps, templates, webhooks

    for module in (sweeps, compare, registry, webhooks, templates):
        module.add_commands(sub)
    return parser
