"""A worker's lease on the row it works on (a training job, an export): a thread renews it while the work goes
on; the lease is lost when a renewal matches no row (another attempt owns it now) or the database stays
unreachable for longer than the lease lasts (the reaper may have handed it on meanwhile).

The renewal itself is the caller's: a conditional UPDATE naming its attempt (app.job_state, app.export_state),
so this module knows no tables.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import exc as sa_exc

from worker import shutdown

log = logging.getLogger("visiontune.lease")

T = TypeVar("T")


class LeaseKeeper(threading.Thread):
    """Renews a lease every lease_seconds / 3 and, if asked, watches for cancellation while the work goes on."""

    def __init__(
        self,
        name: str,
        lease_seconds: float,
        renew: Callable[[], bool],
        canceled: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.lease_seconds, self.renew, self.canceled = lease_seconds, renew, canceled
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self._stop_event = threading.Event()
        self.poll = min(1.0, lease_seconds / 4)
        self.renew_every = lease_seconds / 3

    def run(self) -> None:
        last_renewed = time.monotonic()
        next_renew = 0.0
        while not self._stop_event.wait(self.poll):
            try:
                if time.monotonic() >= next_renew:
                    if not self.renew():
                        self.lost.set()
                        return
                    last_renewed = time.monotonic()
                    next_renew = last_renewed + self.renew_every
                if self.canceled is not None and self.canceled():
                    self.cancel.set()
            except Exception:  # database unreachable: keep trying until our lease would have run out
                log.warning("%s: lease renewal failed; retrying", self.name, exc_info=True)
                if time.monotonic() - last_renewed > self.lease_seconds:
                    self.lost.set()
                    return

    def stop(self) -> None:
        self._stop_event.set()

    def should_stop(self) -> bool:
        return self.cancel.is_set() or self.lost.is_set() or shutdown.requested()


def with_db_retry(action: Callable[[], T], within_seconds: float) -> T:
    """Run a unit of work, retrying while the database is unreachable (restart, failover, killed backend).

    Gives up after within_seconds (the lease): by then the lease has run out and another attempt may own the row.
    """
    deadline = time.monotonic() + within_seconds
    delay = 0.25
    while True:
        try:
            return action()
        except (sa_exc.OperationalError, sa_exc.InterfaceError):
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database unreachable; retrying in %.2fs", delay, exc_info=True)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
