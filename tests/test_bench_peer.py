"""The headline's tuned DP-FedAvg peer: its setting is picked on seed 0 alone, then scored over every seed run at it."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.fedavg_sweep import tuned  # noqa: E402


def _row(seed: int, rounds: int, lr: float, accuracy: float, epsilon: float = 1.0, sites: int = 10) -> dict:
    return {"epsilon": epsilon, "sites": sites, "alpha": 0.5, "seed": seed, "rounds": rounds, "lr": lr,
            "accuracy": accuracy, "bytes_total": 2 * rounds * sites * 100}


def test_the_setting_is_chosen_on_seed_zero_and_scored_on_every_seed_run_at_it():
    rows = [_row(0, 50, 0.2, 0.84), _row(0, 100, 0.1, 0.86),
            _row(1, 100, 0.1, 0.80), _row(1, 50, 0.2, 0.95),  # seed 1's best setting must not be picked
            _row(0, 200, 0.1, 0.99, epsilon=10.0), _row(0, 200, 0.1, 0.10, sites=30)]  # other ε, other federation
    peer = tuned(rows)
    assert set(peer) == {1.0, 10.0}
    one = peer[1.0]
    assert (one["rounds"], one["lr"], one["seeds"], one["settings_tried"]) == (100, 0.1, [0, 1], 2)
    assert one["accuracy_mean"] == pytest.approx(0.83)
    assert one["accuracy_std"] == pytest.approx(0.0424, abs=1e-3)
    assert one["bytes_total"] == 2 * 100 * 10 * 100  # the chosen setting's rounds
    assert peer[10.0]["accuracy_std"] is None  # one seed: no spread


def test_a_federation_measured_only_on_other_seeds_has_no_tuned_peer():
    assert tuned([_row(1, 50, 0.2, 0.9)]) == {}
