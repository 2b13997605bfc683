"""The fine-tuning benchmark's verdicts: speed targets per run, accuracy targets on the mean over seeds."""

from __future__ import annotations

import pytest

from benchmarks._bench_common import EpochTiming, RunResult
from benchmarks.finetune_cifar import ScenarioResult, all_checks, checks_for, make_scenario, seed_summaries


def run(side: str, seconds: float, accuracy: float | None) -> RunResult:
    epochs = [EpochTiming(epoch=1, seconds=seconds)]
    return RunResult("x", side, "partial", 96, epochs, total_seconds=seconds + 1, test_accuracy=accuracy)


def result(name: str, seed: int, service: RunResult, plain: RunResult | None = None) -> ScenarioResult:
    scenario = make_scenario(name, {}, quick=False, seed=seed, several_seeds=True)
    outcome = ScenarioResult(scenario, service, plain)
    outcome.checks = checks_for(outcome)
    return outcome


def verdicts(results: list[ScenarioResult]) -> dict[tuple[str, str], tuple[float | None, bool]]:
    checks = all_checks(results, seed_summaries(results))
    return {(c.scenario, c.description): (c.value, c.passed) for c in checks}


def test_recipe_floor_is_judged_on_the_mean_over_seeds():
    accuracies = [0.914, 0.9243, 0.9056, 0.8997]  # one seed a single test image short of 90%
    got = verdicts([result("recipe", seed, run("service", 100, a)) for seed, a in enumerate(accuracies)])
    assert got == {("recipe", "service test acc >= 0.9 (mean over 4 seeds)"): (pytest.approx(0.9109), True)}
    summary = seed_summaries([result("recipe", 0, run("service", 100, 0.9))])["recipe"]
    assert not summary["paired"] and summary["mean_plain_test_accuracy"] is None
    # A failed job has no test accuracy and counts as 0.
    failed = verdicts([result("recipe", 0, run("service", 100, 0.95)), result("recipe", 1, run("service", 1, None))])
    assert list(failed.values()) == [(pytest.approx(0.475), False)]


def test_linear_checks_speed_per_run_and_accuracy_over_seeds():
    results = [
        result("linear", 0, run("service", 10, 0.855), run("plain", 100, 0.867)),  # -1.2 points alone
        result("linear", 1, run("service", 50, 0.870), run("plain", 100, 0.866)),  # only 2x faster
    ]
    got = verdicts(results)
    assert got[("linear/seed0", "plain/service total s >= 3")][1] is True
    assert got[("linear/seed1", "plain/service total s >= 3")] == (pytest.approx(101 / 51), False)
    assert got[("linear", "service test acc >= 0.85 (mean over 2 seeds)")] == (pytest.approx(0.8625), True)
    tolerance = got[("linear", "|service - plain test acc| <= 0.01 (mean over 2 seeds)")]
    assert tolerance == (pytest.approx(-0.004), True)
    assert not any("seed0" in scenario and "acc" in description for scenario, description in got)


def test_partial_and_full_are_judged_on_speed_only():
    got = verdicts([result("full", 0, run("service", 60, 0.5), run("plain", 50, 0.7))])
    assert got == {("full/seed0", "service mean s/epoch <= plain loop (plain/service >= 1)"): (50 / 60, False)}
