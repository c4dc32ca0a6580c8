"""transerve: build versioned TorchServe archives from model specs, serve them, and operate them.

init | archive | serve | run | stop | status | export | validate | register | scale | unregister
| rollout | promote | rollback
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import requests

from handlers.config import ConfigError
from transerve.build import archive
from transerve.build.prepare import PrepareError
from transerve.build.spec import MODELS_DIR, ONE_WORKER, SpecError, all_specs, find_spec
from transerve.operate import deploy
from transerve.operate.rollout import History, RolloutError, Rollouts, drain
from transerve.operate.validate import run_samples, served, validate
from transerve.torchserve import metrics_api
from transerve.torchserve.management import ApiError, InferenceClient, ManagementClient
from transerve.torchserve.rundir import RunDir
from transerve.torchserve.server import (
    CONFIG_TEMPLATE,
    RUN_DIR,
    Server,
    ServerError,
    clients,
    running_pid,
    stop_helpers,
    stop_running,
)

# Exit codes: 0 done, 1 the operation failed (server or API said no), 2 bad usage or spec.
FAILED, BAD_INPUT = 1, 2
# What each library error means to the shell; the first match wins. Anything else is a bug,
# and shows its traceback.
EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (ConfigError, BAD_INPUT),  # a spec, a flag's value (SpecError is one)
    (RolloutError, FAILED),
    (ApiError, FAILED),
    (ServerError, FAILED),
    (archive.ArchiveError, FAILED),
    (PrepareError, FAILED),
)


def _server(args) -> Server:
    return Server(model_store=args.model_store, run_dir=args.run_dir)


def _clients(args) -> tuple[ManagementClient, InferenceClient]:
    """Clients for the server started from args.run_dir (its effective config and keys)."""
    return clients(RunDir(args.run_dir), args.management_key, args.inference_key)


def _short(value, width: int = 4):
    """Long float vectors shortened for the terminal: the first few numbers and the count."""
    if isinstance(value, list) and len(value) > 2 * width and all(isinstance(v, float) for v in value):
        return [round(v, 4) for v in value[:width]] + [f"... {len(value)} values"]
    if isinstance(value, list):
        return [_short(v, width) for v in value]
    if isinstance(value, dict):
        return {k: _short(v, width) for k, v in value.items()}
    return value


def cmd_init(args) -> int:
    from transerve.build.scaffold import init

    written = init(args.name, args.source, Path(args.models_dir), revision=args.revision, task=args.task)
    source = written.source
    where = source["dir"] if "dir" in source else f"{source['hub']} at commit {source['revision']}"
    print(f"wrote {written.path}")
    print(f"  task     {written.task} ({written.why})")
    print(f"  source   {where}")
    print(f"  workers  {written.workers} x {written.threads} thread(s)")
    for note in written.notes:
        print(f"note: {note}")
    print(f"next:\n  transerve archive {args.name}\n  transerve serve --models {args.name} --sample")
    return 0


def cmd_archive(args) -> int:
    spec = find_spec(args.name, Path(args.models_dir))
    versions = spec.versions if args.version == "all" else [args.version or spec.default_version]
    for version in versions:
        # With --json, stdout is one record a line: the build's progress goes to stderr.
        log = (lambda line: print(line, file=sys.stderr)) if args.json else print
        record = archive.build(spec.version(version), Path(args.model_store), force=args.force, log=log)
        if args.json:
            print(json.dumps(asdict(record)))
        else:
            state = (
                "reused"
                if record.reused
                else f"built in {record.seconds:.1f} s, {record.size / 1e6 / max(record.seconds, 1e-3):.0f} MB/s"
            )
            hub = f"  from {record.source['hub']} commit {record.source['commit']}" if "commit" in record.source else ""
            print(f"{record.path}  {record.size / 1e6:.1f} MB  sha256 {record.sha256}  ({state}){hub}")
    return 0


def cmd_serve(args) -> int:
    models_dir = Path(args.models_dir)
    specs = [find_spec(n, models_dir) for n in args.models.split(",")] if args.models else all_specs(models_dir)
    versions = [spec.version() for spec in specs]
    for mv in versions:
        record = archive.build(mv, Path(args.model_store), refuse_tampered=True)
        print(
            f"archive {record.path} ({record.size / 1e6:.1f} MB, "
            f"{'reused' if record.reused else f'built in {record.seconds:.1f} s'})"
        )
    server = _server(args)
    started = time.monotonic()
    server.start()
    print(f"TorchServe started in {time.monotonic() - started:.1f}s (logs: {server.log_dir})")
    management, inference = _clients(args)
    for mv in versions:
        started = time.monotonic()
        management.register(mv.archive_name, initial_workers=mv.runtime.minWorkers)
        History.load(Path(args.run_dir)).became_default(mv.name, mv.version)
        print(f"registered {mv.name} {mv.version}: READY in {time.monotonic() - started:.1f}s")
    print(
        f"inference   {server.url('inference')}/predictions/<model>\n"
        f"management  {server.url('management')}/models\n"
        f"metrics     {server.url('metrics')}/metrics\n"
        + (
            f"OpenAI      {server.url('openai')} (base_url for the OpenAI clients; api_key: the inference key)\n"
            if server.openai_address
            else ""
        )
        + f"gRPC        {server.properties.get('grpc_inference_address', '127.0.0.1')}:"
        f"{server.properties.get('grpc_inference_port', '7070')} (inference), "
        f"{server.grpc_management_address} (management)\n"
        f"keys        {server.key_file} (send 'Authorization: Bearer <key>'; "
        "inference key for predictions, management key for /models)"
    )
    wrong = 0
    if args.sample:
        wrong = answer_samples(versions, inference)
        if server.openai_address:
            _openai_samples(server, versions)
    print("stop it with: transerve stop")
    return FAILED if wrong else 0


def answer_samples(versions, inference: InferenceClient) -> int:
    """Each version's first sample, sent to it and checked as a rollout's smoke step checks it
    (validate.run_samples), printed with its answer; -> how many answers were wrong."""
    wrong = 0
    for mv in versions:
        for result in itertools.islice(run_samples(mv, served(inference, mv)), 1):
            print(f"sample request to {mv.name} ({result.ms:.0f} ms): {json.dumps(result.request)}")
            print(f"answer: {json.dumps(_short(result.answer))}")
            if result.problems:
                wrong += 1
                print(f"FAILED: {'; '.join(result.problems)}")
    return wrong


def _openai_samples(server: Server, versions) -> None:
    """Each model's sample again, as an OpenAI request through the gateway."""
    for mv in versions:
        request = mv.samples[0].request if mv.samples else {}
        routes = mv.handler.entry.openai_routes
        if "v1/chat/completions" in routes and "messages" in request:
            route, body = "chat/completions", {"model": mv.name, "messages": request["messages"], "max_tokens": 32}
        elif "v1/embeddings" in routes and request.get("inputs"):
            route, body = "embeddings", {"model": mv.name, "input": request["inputs"]}
        else:
            continue
        started = time.monotonic()
        answer = requests.post(
            f"{server.url('openai')}/{route}",
            json=body,
            timeout=120,
            headers={"Authorization": f"Bearer {server.keys().get('inference', '')}"},
        )
        print(
            f"OpenAI request to {server.url('openai')}/{route} ({(time.monotonic() - started) * 1000:.0f} ms, "
            f"HTTP {answer.status_code}): {json.dumps(body)}"
        )
        print(f"answer: {json.dumps(_short(answer.json()))}")


def cmd_run(args) -> int:
    store, models_dir = Path(args.model_store), Path(args.models_dir)
    archives = archive.startup_archives(args.models, store, models_dir)
    server = Server(model_store=store, run_dir=args.run_dir, template=Path(args.config), guard=False)
    return server.run(archives, timeout=args.ready_timeout)


def cmd_export(args) -> int:
    mv = find_spec(args.name, Path(args.models_dir)).version(args.version)
    res = deploy.resources(args.cpu, args.memory, args.gpus)
    if args.target == "kserve":
        written = deploy.export_kserve(
            mv,
            Path(args.model_store),
            Path(args.out),
            args.storage_uri,
            res,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            canary_percent=args.canary,
            manifest_only=args.manifest_only,
        )
    else:
        written = deploy.export_kubernetes(mv, Path(args.out), args.image, res, args.replicas)
    for what, path in written.items():
        print(f"{what:9} {path}")
    if args.target == "kserve" and not args.manifest_only:
        print(f"copy {args.out} to the storage behind the storageUri, then: kubectl apply -f {written['manifest']}")
    return 0


def cmd_stop(args) -> int:
    stop_helpers(Path(args.run_dir))
    stopped = stop_running()
    RunDir(args.run_dir).key_file.unlink(missing_ok=True)
    print("TorchServe stopped" if stopped else "TorchServe was not running")
    return 0


def cmd_status(args) -> int:
    if running_pid() is None:
        print("TorchServe is not running")
        return FAILED
    if args.metrics:
        return _status_metrics(args)
    management, _ = _clients(args)
    names = [args.name] if getattr(args, "name", None) else management.list_models()
    rows = [v for name in names for v in management.describe(name)]
    if args.json:
        run = RunDir(args.run_dir)
        print(
            json.dumps(
                {
                    "inference_url": run.address("inference"),
                    "management_url": run.address("management"),
                    "metrics_url": run.address("metrics"),
                    "openai_base_url": run.address("openai"),
                    "models": [asdict(r) for r in rows],
                },
                indent=2,
            )
        )
        return 0
    _table(
        ("MODEL", "VERSION", "DEFAULT", "WORKERS", "MIN-MAX", "BATCH", "DELAY(ms)", "QUEUED"),
        [
            (
                r.name,
                r.version,
                "*" if r.is_default else "",
                f"{r.ready_workers}/{len(r.workers)} ready",
                f"{r.min_workers}-{r.max_workers}",
                str(r.batch_size),
                str(r.max_batch_delay),
                str(r.pending_requests),
            )
            for r in rows
        ],
    )
    return 0


def _status_metrics(args) -> int:
    """Live figures per model version, from TorchServe's metrics API (what Prometheus scrapes)."""
    address = RunDir(args.run_dir).address("metrics")
    try:
        figures = metrics_api.per_version(metrics_api.scrape(address))
    except requests.RequestException as e:
        raise ServerError(f"cannot read TorchServe's metrics API at {address}: {e}") from None
    figures = [f for f in figures if not getattr(args, "name", None) or f.model == args.name]
    if args.json:
        print(json.dumps([asdict(f) for f in figures], indent=2))
        return 0

    def num(value, digits=0):
        return "-" if value is None else f"{value:,.{digits}f}"

    _table(
        (
            "MODEL",
            "VERSION",
            "TASK",
            "OK",
            "REFUSED",
            "INPUTS",
            "BATCH(mean)",
            "TOKENS IN",
            "TOKENS OUT",
            "MODEL ms(mean)",
            "1ST TOKEN ms(mean)",
        ),
        [
            (
                f.model,
                f.version,
                f.task,
                num(f.ok),
                num(f.refused),
                num(f.inputs),
                num(f.mean_batch, 1),
                num(f.input_tokens),
                num(f.generated_tokens),
                num(f.mean_inference_ms, 1),
                num(f.mean_first_token_ms, 1),
            )
            for f in figures
        ],
    )
    return 0


def _table(header: tuple, rows: list[tuple]) -> None:
    table = [header] + rows
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _done(args, result: dict) -> int:
    """Print what an operation did: a line for people, or one JSON object with --json."""
    print(json.dumps(result) if args.json else result["message"])
    return 0


def cmd_register(args) -> int:
    mv = find_spec(args.name, Path(args.models_dir)).version(args.version)
    record = archive.build(
        mv, Path(args.model_store), log=lambda line: None if args.json else print(line), refuse_tampered=True
    )
    workers = mv.runtime.minWorkers if args.workers is None else args.workers
    if mv.runtime.continuousBatching and workers > 1:
        raise SpecError(f"{mv.name} {mv.version}: --workers {workers}: {ONE_WORKER}")
    management, _ = _clients(args)
    message = management.register(mv.archive_name, initial_workers=workers, timeout=mv.runtime.startupTimeout + 60)
    [status] = management.describe(mv.name, mv.version)
    return _done(
        args,
        {
            "model": mv.name,
            "version": mv.version,
            "archive": record.path,
            "default": status.is_default,
            "ready_workers": status.ready_workers,
            "message": f"{message}: {mv.name} {mv.version}, {status.ready_workers} workers READY"
            f"{', default' if status.is_default else ', not default (transerve rollout or promote makes it default)'}",
        },
    )


def _spec_or_none(args):
    """The model's spec, or None for a model registered from elsewhere."""
    try:
        return find_spec(args.name, Path(args.models_dir))
    except SpecError:
        return None


def _drain_before_stopping(args, management, inference, version: str | None) -> None:
    """Stopping every worker of a version that holds requests would cut them (TorchServe 0.12 puts
    their jobs back in a queue no worker takes): drain it first, as a rollout does. Without a spec:
    the longest bound, and the drain route tried."""
    version = version or management.default_version(args.name)
    drain(
        management,
        inference,
        Path(args.run_dir),
        _spec_or_none(args),
        version,
        args.drain_timeout,
        print,
        name=args.name,
    )


def cmd_scale(args) -> int:
    management, inference = _clients(args)
    maximum = args.max_workers if args.max_workers is not None else args.workers
    if maximum > 1 and (spec := _spec_or_none(args)) is not None:  # without a spec, TorchServe decides
        version = args.version or management.default_version(args.name)
        try:
            continuous = spec.version(version).runtime.continuousBatching
        except SpecError:
            continuous = False  # a version the spec no longer lists
        if continuous:
            raise SpecError(f"{args.name} {version}: {maximum} workers: {ONE_WORKER}")
    if args.workers == 0 and maximum == 0:
        _drain_before_stopping(args, management, inference, args.version)
    management.scale(args.name, args.workers, maximum, version=args.version)
    [status] = (
        management.describe(args.name, args.version)
        if args.version
        else [s for s in management.describe(args.name) if s.is_default]
    )
    return _done(
        args,
        {
            "model": args.name,
            "version": status.version,
            "min_workers": status.min_workers,
            "max_workers": status.max_workers,
            "ready_workers": status.ready_workers,
            "message": f"{args.name} {status.version}: {status.ready_workers}/{len(status.workers)} workers READY "
            f"(min {status.min_workers}, max {status.max_workers})",
        },
    )


def cmd_unregister(args) -> int:
    management, inference = _clients(args)
    _drain_before_stopping(args, management, inference, args.version)
    message = management.unregister(args.name, args.version)
    return _done(args, {"model": args.name, "version": args.version, "message": message})


def cmd_validate(args) -> int:
    """Load the archive's handler in-process as a worker would, and run the spec's samples through it."""
    mv = find_spec(args.name, Path(args.models_dir)).version(args.version)
    return 0 if validate(mv, Path(args.model_store), gpu=args.gpu, short=_short) else FAILED


def _rollouts(args) -> Rollouts:
    management, inference = _clients(args)
    return Rollouts(
        management,
        inference,
        Path(args.model_store),
        Path(args.run_dir),
        log=print,
        drain_timeout=args.drain_timeout,
        keep=args.keep,
    )


def cmd_rollout(args) -> int:
    spec = find_spec(args.name, Path(args.models_dir))
    spec.version(args.version)  # an unknown version is a usage error, before anything runs
    _rollouts(args).rollout(spec, args.version, canary=args.canary)
    return 0


def cmd_promote(args) -> int:
    _rollouts(args).promote(find_spec(args.name, Path(args.models_dir)), args.version)
    return 0


def cmd_rollback(args) -> int:
    _rollouts(args).rollback(find_spec(args.name, Path(args.models_dir)))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="transerve", description=__doc__)
    env = os.environ.get
    top.add_argument(
        "--model-store",
        default=env("TRANSERVE_MODEL_STORE", str(archive.STORE)),
        help="where archives are built and served from (default: $TRANSERVE_MODEL_STORE, else model_store/)",
    )
    top.add_argument(
        "--run-dir",
        default=env("TRANSERVE_RUN_DIR", str(RUN_DIR)),
        help="TorchServe's working dir: effective config, keys, logs (default: $TRANSERVE_RUN_DIR, else .transerve/)",
    )
    top.add_argument("--models-dir", default=str(MODELS_DIR), help="where the model specs (NAME/model.yaml) are")
    top.add_argument("--management-key", help="management API key (default: read from the run dir's key_file.json)")
    top.add_argument("--inference-key", help="inference API key (default: read from the run dir's key_file.json)")
    verbs = top.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser(
        "init", help="write models/NAME/model.yaml for a model folder or Hub id, task read from the model"
    )
    p.add_argument("name", help="the model's name in TorchServe (and its folder under models/)")
    p.add_argument(
        "--source",
        required=True,
        metavar="PATH|ORG/NAME",
        help="a folder saved by transformers or sentence-transformers, or a Hugging Face Hub id",
    )
    p.add_argument("--revision", help="Hub sources: a commit, branch or tag (default main); the spec pins its commit")
    p.add_argument(
        "--task",
        help="embedding | classification | token_classification | generation "
        "(default: read from config.json or modules.json)",
    )
    p.set_defaults(run=cmd_init)

    p = verbs.add_parser("archive", help="build model_store/NAME-VERSION.mar from models/NAME/model.yaml")
    p.add_argument("name")
    p.add_argument("version", nargs="?", help="a version of the spec, or 'all' (default: the spec's default)")
    p.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_archive)

    p = verbs.add_parser("serve", help="build the default archives, start TorchServe, register them")
    p.add_argument("--models", help="comma-separated model names (default: every spec under models/)")
    p.add_argument("--sample", action="store_true", help="send each model's first sample request and print the answer")
    p.set_defaults(run=cmd_serve)

    p = verbs.add_parser("run", help="TorchServe in the foreground serving built archives (the container entrypoint)")
    p.add_argument(
        "--models",
        default=os.environ.get("TRANSERVE_MODELS", ""),
        help="NAME[:VERSION],... (default: $TRANSERVE_MODELS); a bare NAME is its spec's default version",
    )
    p.add_argument(
        "--config",
        default=os.environ.get("TRANSERVE_CONFIG", str(CONFIG_TEMPLATE)),
        help="config.properties to start from (default: $TRANSERVE_CONFIG, else the repository's)",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=float(os.environ.get("TRANSERVE_READY_TIMEOUT", 600)),
        help="seconds for every model to have a READY worker before giving up (default 600)",
    )
    p.set_defaults(run=cmd_run)

    p = verbs.add_parser(
        "export",
        help="deployment files for one version: KServe's layout and InferenceService, "
        "or a Kubernetes Deployment + Service",
    )
    p.add_argument("target", choices=("kserve", "k8s"))
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--out", required=True, help="directory to write into")
    p.add_argument("--cpu", default="2", help="CPU request and limit per replica (default 2)")
    p.add_argument("--memory", default="4Gi", help="memory request and limit per replica (default 4Gi)")
    p.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu per replica (default 0)")
    p.add_argument(
        "--storage-uri", help="kserve: where --out is uploaded (default pvc://transerve-models/NAME/VERSION)"
    )
    p.add_argument("--min-replicas", type=int, default=1, help="kserve: default 1 (0 lets KServe scale to zero)")
    p.add_argument("--max-replicas", type=int, default=1, help="kserve: default 1")
    p.add_argument(
        "--canary",
        type=int,
        metavar="PERCENT",
        help="kserve: canaryTrafficPercent, the share of traffic this version gets while it is new",
    )
    p.add_argument("--manifest-only", action="store_true", help="kserve: only the InferenceService, no archive")
    p.add_argument("--image", default="transerve:latest", help="k8s: the image built from the Dockerfile")
    p.add_argument("--replicas", type=int, default=2, help="k8s: default 2")
    p.set_defaults(run=cmd_export)

    p = verbs.add_parser("stop", help="stop TorchServe")
    p.set_defaults(run=cmd_stop)

    p = verbs.add_parser("status", help="models, versions and workers of the running TorchServe")
    p.add_argument("name", nargs="?", help="one model (default: all)")
    p.add_argument("--metrics", action="store_true", help="live figures per version from the metrics API instead")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_status)

    p = verbs.add_parser("register", help="build if needed and register NAME VERSION beside the others (not default)")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--workers", type=int, help="initial workers (default: the spec's minWorkers)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_register)

    p = verbs.add_parser("scale", help="set the workers of a model version")
    p.add_argument("name")
    p.add_argument("--version", help="default: the default version")
    p.add_argument("--workers", type=int, required=True, help="minimum workers (0 stops them all)")
    p.add_argument("--max-workers", type=int, help="maximum workers (default: --workers)")
    p.add_argument(
        "--drain-timeout",
        type=float,
        metavar="SECONDS",
        help="scaling to 0: how long the version may go on answering what it holds before the rest is ended",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_scale)

    p = verbs.add_parser("validate", help="load a version's archive in-process as a worker would and run its samples")
    p.add_argument("name")
    p.add_argument("version", nargs="?", help="default: the spec's default version")
    p.add_argument("--gpu", type=int, help="GPU id to load on, as TorchServe would assign it (default: CPU)")
    p.set_defaults(run=cmd_validate)

    p = verbs.add_parser("unregister", help="unregister one version of a model (drained first)")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument(
        "--drain-timeout",
        type=float,
        metavar="SECONDS",
        help="how long the version may go on answering what it holds before the rest is ended",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_unregister)

    for verb, help_text in (
        ("rollout", "make VERSION the default safely: register, warm, smoke-test, switch, drain the old one"),
        ("promote", "finish a canary rollout: make VERSION the default and drain the old one"),
        ("rollback", "make the previous default the default again"),
    ):
        p = verbs.add_parser(verb, help=help_text)
        p.add_argument("name")
        if verb != "rollback":
            p.add_argument("version")
        if verb == "rollout":
            p.add_argument(
                "--canary",
                action="store_true",
                help="stop after the smoke test; the version answers at /predictions/NAME/VERSION only",
            )
        p.add_argument("--keep", type=int, default=2, help="versions kept registered for rollback (default 2)")
        p.add_argument(
            "--drain-timeout",
            type=float,
            metavar="SECONDS",
            help="how long the old version may go on answering what it holds before what is left is ended "
            "(default: its spec's max_timeout for generation, responseTimeout otherwise)",
        )
        p.set_defaults(run={"rollout": cmd_rollout, "promote": cmd_promote, "rollback": cmd_rollback}[verb])
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except tuple(kind for kind, _ in EXIT_CODES) as e:
        where = f"{args.verb} {args.name}: " if isinstance(e, RolloutError) else ""
        print(f"error: {where}{e}", file=sys.stderr)
        return next(code for kind, code in EXIT_CODES if isinstance(e, kind))


if __name__ == "__main__":
    sys.exit(main())
