"""The `visiontune` command: the server's (run (embedded), api, worker, reaper, migrate, keys) and, handed to
visiontune.cli, the client's (login, logout, datasets, jobs, models, predict)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

# The client's commands (visiontune.cli), listed in --help beside the server's.
CLIENT_COMMANDS = {
    "login": "(client) check an API key against a server and keep the URL and key",
    "logout": "(client) forget the saved URL and key",
    "datasets": "(client) upload, list, show, delete datasets",
    "jobs": "(client) submit, follow, list, show, cancel jobs; their live events",
    "models": "(client) list, show, promote, unpin, alias, rollback models",
    "predict": "(client) classify images with a served model",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in CLIENT_COMMANDS:
        # The client (Typer) talks to a server over HTTP: none of the server's modules are loaded for it.
        from visiontune.cli import main as client_main

        return client_main(argv)
    from app import keys_cli
    from app.config import get_settings

    parser = argparse.ArgumentParser(prog="visiontune", description="Fine-tune and serve image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="everything on this machine: SQLite, embedded Redis, a worker, the API")
    run.add_argument("--host", default=None)
    run.add_argument("--port", type=int, default=None)
    run.add_argument("--redis-port", type=int, default=None, help="port of the embedded Redis (default: free)")
    api = sub.add_parser("api", help="the HTTP API (uvicorn)")
    api.add_argument("--host", default=None)
    api.add_argument("--port", type=int, default=None)
    api.add_argument("--workers", type=int, default=1)
    sub.add_parser("worker", help="one Celery training worker per visible GPU (one on CPU without GPUs)")
    proc = sub.add_parser("worker-process", help="a single Celery worker (started by `worker`)")
    proc.add_argument("--name", default="cpu")
    sub.add_parser("reaper", help="requeue jobs of dead workers and re-send tasks the broker lost (loop)")
    sub.add_parser("migrate", help="alembic upgrade head on the configured database")
    keys_cli.add_parser(sub)
    for name, text in CLIENT_COMMANDS.items():  # for --help only: `visiontune NAME --help` is the client's help
        sub.add_parser(name, help=text, add_help=False)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    # Each command imports what it runs, so that `keys` or `migrate` do not load the server, the broker client
    # or the workers (and uvicorn's worker processes, which import this module, carry none of it).
    if args.command == "keys":
        return keys_cli.run(settings, args)
    if args.command in ("run", "api"):
        if args.host:
            settings.host = args.host
            os.environ["VISIONTUNE_HOST"] = args.host  # API worker processes check auth=off against it too
        if args.port:
            settings.port = args.port
        from app.auth import check_auth_mode

        check_auth_mode(settings)
    if args.command in ("run", "api", "worker", "reaper"):
        # Before anything imports prometheus_client: its multiprocess mode is chosen at import, in every process.
        from launcher.metrics import prepare_metrics_dir

        metrics_dir = prepare_metrics_dir(settings, args.command)
    if args.command == "run":
        from launcher.embedded import run_embedded

        return run_embedded(settings, args.redis_port)
    if args.command == "api":
        import uvicorn

        uvicorn.run("app.main:create_app", factory=True, host=settings.host, port=settings.port, workers=args.workers)
        return 0
    if args.command == "worker":
        from launcher.supervise import supervise
        from launcher.workers import reaper_command, visible_gpus, worker_commands

        if settings.worker_metrics_port:
            from launcher.metrics import serve_metrics

            serve_metrics(metrics_dir, settings.worker_metrics_host, settings.worker_metrics_port)
        return supervise([*worker_commands(visible_gpus()), reaper_command()])
    if args.command == "reaper":
        from worker.reaper import run_reaper

        return run_reaper(settings)
    if args.command == "worker-process":
        from worker.launch import run_worker_process

        run_worker_process(args.name)
        return 0
    from app.migrate import upgrade

    upgrade(settings.resolved_database_url())
    return 0


if __name__ == "__main__":
    sys.exit(main())
