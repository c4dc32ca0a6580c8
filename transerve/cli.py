"""`transerve archive | serve | stop | status`: build archives and run TorchServe with them."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from handlers.config import ConfigError
from transerve import archive
from transerve.management import ApiError, InferenceClient, ManagementClient, key_reader
from transerve.server import RUN_DIR, Server, ServerError, read_properties, running_pid, stop_running
from transerve.spec import all_specs, find_spec

# Exit codes: 0 done, 1 the operation failed (server or API said no), 2 bad usage or spec.
FAILED, BAD_INPUT = 1, 2


def _server(args) -> Server:
    return Server(model_store=args.model_store, run_dir=args.run_dir)


def _clients(args) -> tuple[ManagementClient, InferenceClient]:
    """Clients for the server started from args.run_dir (its effective config and keys)."""
    config = Path(args.run_dir) / "config.properties"
    if not config.exists():
        raise ServerError(f"no TorchServe was started from {args.run_dir}; run `transerve serve` first")
    props = read_properties(config)
    keys = Path(args.run_dir) / "key_file.json"
    return (
        ManagementClient(props["management_address"], key_reader(keys, "management")),
        InferenceClient(props["inference_address"], key_reader(keys, "inference")),
    )


def _short(value, width: int = 4):
    """Long float vectors shortened for the terminal: the first few numbers and the count."""
    if isinstance(value, list) and len(value) > 2 * width and all(isinstance(v, float) for v in value):
        return [round(v, 4) for v in value[:width]] + [f"... {len(value)} values"]
    if isinstance(value, list):
        return [_short(v, width) for v in value]
    if isinstance(value, dict):
        return {k: _short(v, width) for k, v in value.items()}
    return value


def cmd_archive(args) -> int:
    spec = find_spec(args.name)
    versions = spec.versions if args.version == "all" else [args.version or spec.default_version]
    for version in versions:
        record = archive.build(spec.version(version), Path(args.model_store), force=args.force)
        if args.json:
            print(json.dumps(asdict(record)))
        else:
            state = "reused" if record.reused else "built"
            print(f"{record.path}  {record.size / 1e6:.1f} MB  sha256 {record.sha256}  ({state})")
    return 0


def cmd_serve(args) -> int:
    specs = [find_spec(n) for n in args.models.split(",")] if args.models else all_specs()
    versions = [spec.version() for spec in specs]
    for mv in versions:
        record = archive.build(mv, Path(args.model_store))
        print(f"archive {record.path} ({record.size / 1e6:.1f} MB, {'reused' if record.reused else 'built'})")
    server = _server(args)
    started = time.monotonic()
    server.start()
    print(f"TorchServe started in {time.monotonic() - started:.1f}s (logs: {server.log_dir})")
    management, inference = _clients(args)
    for mv in versions:
        started = time.monotonic()
        management.register(mv.archive_name, initial_workers=mv.runtime.minWorkers)
        print(f"registered {mv.name} {mv.version}: READY in {time.monotonic() - started:.1f}s")
    print(
        f"inference   {server.url('inference')}/predictions/<model>\n"
        f"management  {server.url('management')}/models\n"
        f"metrics     {server.url('metrics')}/metrics\n"
        f"keys        {server.key_file} (send 'Authorization: Bearer <key>'; "
        "inference key for predictions, management key for /models)"
    )
    if args.sample:
        for mv in versions:
            if not mv.samples:
                continue
            started = time.monotonic()
            answer = inference.predict(mv.name, mv.samples[0])
            print(f"sample request to {mv.name} ({(time.monotonic() - started) * 1000:.0f} ms): {json.dumps(mv.samples[0])}")
            print(f"answer: {json.dumps(_short(answer))}")
    print("stop it with: transerve stop")
    return 0


def cmd_stop(args) -> int:
    stopped = stop_running()
    (Path(args.run_dir) / "key_file.json").unlink(missing_ok=True)
    print("TorchServe stopped" if stopped else "TorchServe was not running")
    return 0


def cmd_status(args) -> int:
    if running_pid() is None:
        print("TorchServe is not running")
        return FAILED
    management, _ = _clients(args)
    rows = [v for name in management.list_models() for v in management.describe(name)]
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    header = ("MODEL", "VERSION", "DEFAULT", "WORKERS", "MIN-MAX", "BATCH", "DELAY(ms)")
    table = [header] + [
        (r.name, r.version, "*" if r.is_default else "", f"{r.ready_workers}/{len(r.workers)} ready",
         f"{r.min_workers}-{r.max_workers}", str(r.batch_size), str(r.max_batch_delay))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="transerve", description=__doc__)
    top.add_argument("--model-store", default=str(archive.STORE), help="where archives are built and served from")
    top.add_argument("--run-dir", default=str(RUN_DIR), help="TorchServe's working dir: effective config, keys, logs")
    verbs = top.add_subparsers(dest="verb", required=True)

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

    p = verbs.add_parser("stop", help="stop TorchServe")
    p.set_defaults(run=cmd_stop)

    p = verbs.add_parser("status", help="models, versions and workers of the running TorchServe")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_status)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT
    except (ApiError, ServerError, archive.ArchiveError) as e:
        print(f"error: {e}", file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
