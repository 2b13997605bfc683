"""A Celery training worker with a fault injected, for the failure tests (never used in production).

CHAOS_KILL_AFTER_EPOCH=N  the process SIGKILLs itself right after epoch N is recorded (any job)
CHAOS_KILL_AT_START=1     the process SIGKILLs itself as soon as a job starts training (every time)
CHAOS_STALL_EXPORT=1      an export hangs once its ONNX file is made, before verification (its lease thread still
                          renews the lease), until the process is killed: the test kills it mid-export for sure
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import worker.runner as runner_module  # noqa: E402
from worker.launch import run_worker_process  # noqa: E402


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kill_after = os.environ.get("CHAOS_KILL_AFTER_EPOCH")
    if kill_after:
        record = runner_module.JobRunner.record_epoch

        def record_then_die(self, hooks, report, built, state):  # type: ignore[no-untyped-def]
            record(self, hooks, report, built, state)
            if report.epoch >= int(kill_after):
                die()

        runner_module.JobRunner.record_epoch = record_then_die  # type: ignore[method-assign]
    if os.environ.get("CHAOS_KILL_AT_START"):
        runner_module.fit = lambda *_a, **_k: die()  # type: ignore[assignment]
    if os.environ.get("CHAOS_STALL_EXPORT"):
        import threading

        import worker.exporter as exporter_module

        def stall(*_a, **_k):  # type: ignore[no-untyped-def]
            logging.getLogger("visiontune.chaos").warning("chaos: export stalled before verification")
            threading.Event().wait()

        exporter_module.verify = stall  # type: ignore[assignment]
    run_worker_process(sys.argv[1] if len(sys.argv) > 1 else "chaos")


if __name__ == "__main__":
    main()
