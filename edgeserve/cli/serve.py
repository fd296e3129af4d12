"""serve: the repository over the Open Inference Protocol (REST and gRPC) until SIGTERM."""

from __future__ import annotations

from pathlib import Path

import click

from . import main


@main.command()
@click.argument("repository", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs --token-file (or --insecure).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="REST port.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True, help="gRPC port.")
@click.option("--no-grpc", is_flag=True, help="Serve REST only.")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Bearer tokens, one 'NAME SCOPES TOKEN' per line (scopes: infer, metrics, admin).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback bind without tokens.")
@click.option("--model-control", is_flag=True,
              help="Load, unload and list models over HTTP (Triton's repository extension); admin tokens only.")
@click.option("--shared-memory", is_flag=True,
              help="Triton's system shared-memory extension: clients on this machine pass tensors through /dev/shm "
                   "segments they register (any segment the server's user may open, so for trusted local clients).")
@click.option("--poll", "poll_s", type=click.FloatRange(0, 86400), default=2.0, show_default=True,
              help="Seconds between looks at the repository: a version published, rolled back or pinned with "
                   "'edgeserve models' serves without a restart (0: never).")
@click.option("--drain-timeout", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True,
              help="Seconds SIGTERM waits for in-flight requests.")
@click.option("--max-body-mb", type=click.FloatRange(0.001, 4096), default=64.0, show_default=True,
              help="Largest request body accepted (413 beyond).")
@click.option("--batching/--no-batching", default=True, show_default=True,
              help="Dynamic batching for every model (a model's serving.json overrides).")
@click.option("--max-batch-size", type=click.IntRange(1, 65536), default=32, show_default=True)
@click.option("--max-wait-ms", type=click.FloatRange(0.001, 3_600_000), default=None,
              help="Refuse (503, Retry-After) a request that would wait longer than this for its answer (the "
                   "queued work and its own batch): bounds the latency of accepted requests under overload.")
@click.option("--cache-mb", type=click.FloatRange(0, 1 << 20), default=0.0, show_default=True,
              help="Response cache per model (0: off).")
@click.option("--threads", type=click.IntRange(1, 1024),
              help="Intra-op threads per model (default: all cores, at a lower priority than the event loop; with "
                   "--workers N, each worker's share of them).")
@click.option("--engine-nice", type=click.IntRange(0, 19), default=10, show_default=True,
              help="How many steps below the event loop the engine's threads run (Linux): the loop gets a core "
                   "when it has requests to read and answer. 0: the same priority.")
@click.option("--guard/--no-guard", default=True, show_default=True,
              help="Envelope checks and drift monitoring (per-model settings in serving.json's \"guard\").")
@click.option("--audit", "audit_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a hash-chained audit record of every answer and management action to this SQLite file "
                   "(e.g. REPOSITORY/.edgeserve/audit.sqlite3; a path outside a read-only repository mount).")
@click.option("--audit-mode", type=click.Choice(["ack", "bounded"]), default="ack", show_default=True,
              help="ack: answer only after the record is committed; bounded: answer at once, drop (and count) "
                   "records beyond a bounded queue.")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Server processes sharing the ports (each loads the models).")
@click.option("--reuse-port", is_flag=True, hidden=True, help="Bind the ports shared (set for each --workers process).")
def serve(repository: Path, host: str, port: int, grpc_port: int, no_grpc: bool, token_file: Path | None,
          insecure: bool, model_control: bool, shared_memory: bool, poll_s: float,
          drain_timeout: float, max_body_mb: float, batching: bool,
          max_batch_size: int, max_wait_ms: float | None, cache_mb: float, threads: int | None, engine_nice: int,
          guard: bool, audit_path: Path | None, audit_mode: str, workers: int, reuse_port: bool) -> None:
    """Serve the models of REPOSITORY over KServe v2 REST (PORT) and gRPC (GRPC-PORT)."""
    if max_wait_ms is not None and not batching:
        raise click.UsageError("--max-wait-ms needs batching (it estimates a request's wait from the batcher's runs); "
                               "without it a request waits for a worker thread behind at most 1024 others, within "
                               "its deadline (Triton's 'timeout' parameter, else 30 s)")
    if workers > 1:
        import sys

        if port == 0 or (grpc_port == 0 and not no_grpc):
            raise click.UsageError("--workers needs fixed ports (not 0): the workers share them")
        from ..server.app import run_workers

        args = _without_workers(sys.argv[sys.argv.index("serve") + 1:])
        if threads is None:  # the cores shared out: N engines each on every core would take turns on all of them
            from ..config import available_cores

            args += ["--threads", str(max(1, available_cores() // workers))]
        sys.exit(run_workers(args, workers))
    try:
        from ..server.app import ServeConfig, Server, server_session
    except ImportError as exc:
        raise click.ClickException(f"the server needs the 'server' extra ({exc.name} is missing): "
                                   "pip install 'edgeserve[server]'") from None
    from ..config import BatchConfig, CacheConfig, GuardConfig

    config = ServeConfig(host=host, port=port, grpc_port=None if no_grpc else grpc_port, token_file=token_file,
                         insecure=insecure, model_control=model_control, shared_memory=shared_memory, poll_s=poll_s,
                         drain_s=drain_timeout,
                         max_body=int(max_body_mb * 2**20), reuse_port=reuse_port)
    batch_config = BatchConfig(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms) if batching else None
    server = Server(repository, config, batching=batch_config,
                    cache=CacheConfig(max_bytes=int(cache_mb * 2**20)) if cache_mb > 0 else None,
                    session=server_session(threads, nice=engine_nice), guard=GuardConfig() if guard else None,
                    audit=audit_path, audit_mode=audit_mode)
    models = server.runtime.models()
    for name, info in models.items():
        state = f"version {info['version']}" if info["version"] is not None else f"NOT SERVED: {info['error']}"
        click.echo(f"  {name}: {state}", err=True)
    grpc_text = "" if no_grpc else f", gRPC on {host}:{grpc_port}"
    click.echo(f"edgeserve: {len(models)} models from {repository}; REST on http://{host}:{port}{grpc_text}"
               f"{'; auth on' if token_file else ''}{f'; audit log {audit_path}' if audit_path else ''}", err=True)
    server.run()


def _without_workers(args: list[str]) -> list[str]:
    """This command's arguments for one worker: ``--workers N`` (or ``--workers=N``) left out."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            out.append(a)
    return out

