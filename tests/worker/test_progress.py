"""The ETA of a progress event: this epoch's remaining steps at its pace, then the remaining epochs."""

from __future__ import annotations

import pytest

from worker import progress
from worker.progress import EpochPace


def test_eta_uses_this_epochs_pace_then_the_mean_epoch_time(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    pace = EpochPace()
    pace.step(1, 1, 8)
    assert pace.rates() == (None, None)
    assert pace.eta(1, 3, 1, 10, None) is None
    clock[0] = 104.0
    pace.step(1, 5, 40)  # 4 steps, 32 images in 4 s
    rate, images_per_second = pace.rates()
    assert (rate, images_per_second) == (1.0, 8.0)
    # before an epoch has finished, an epoch is estimated at this pace: 5 steps left + 2 epochs × 10 s
    assert pace.eta(1, 3, 5, 10, rate) == pytest.approx(25.0)
    pace.epoch_seconds += [12.0, 14.0]
    clock[0] = 200.0
    pace.step(3, 1, 8)  # a new epoch restarts the pace
    clock[0] = 202.0
    pace.step(3, 3, 24)
    rate, _ = pace.rates()
    assert rate == 1.0 and pace.eta(3, 3, 3, 10, rate) == pytest.approx(7.0)
    assert pace.eta(2, 3, 3, 10, rate) == pytest.approx(7.0 + 13.0)
