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


def test_centring_is_a_setting_of_its_own():
    centred = dict(_row(0, 100, 0.1, 0.87), mean_releases=2)
    rows = [_row(0, 100, 0.1, 0.86), centred, _row(1, 100, 0.1, 0.99),  # seed 1 uncentred: not the chosen setting
            dict(_row(1, 100, 0.1, 0.85), mean_releases=2)]
    one = tuned(rows)[1.0]
    assert (one["mean_releases"], one["seeds"], one["settings_tried"]) == (2, [0, 1], 2)
    assert one["accuracy_mean"] == pytest.approx(0.86)


def test_the_centred_peer_pays_for_its_mean_and_trains_on_the_federations_mean():
    import torch

    from bench.fedavg_sweep import federated_mean, run, site_plan

    assert site_plan(6000, 10, 1.0, 2).noise_multiplier > site_plan(6000, 10, 1.0, 0).noise_multiplier
    assert site_plan(6000, 10, float("inf"), 2).noise_multiplier == 0
    torch.manual_seed(0)
    # different means and sizes (an unweighted average is wrong), every feature within the public bound √D
    sites = [(0.5 * torch.rand(n, 8) + 0.3 * k, torch.arange(n) % 2) for k, n in enumerate((40, 20))]
    plans = [site_plan(len(y), 1, float("inf"), 1) for _, y in sites]
    assert federated_mean(sites, plans, 0, 1, seed=0) is None
    centre = federated_mean(sites, plans, 1, 1, seed=0)  # q = 1, no noise: the exact mean of all records
    assert torch.allclose(centre, torch.cat([x for x, _ in sites]).mean(0), atol=1e-5)
    test = (torch.cat([x for x, _ in sites]), torch.cat([y for _, y in sites]))
    assert 0.0 <= run(sites, test, 1, 0.1, 1.0, seed=0, mean_releases=2) <= 1.0
