"""Pool weights: each image counts as much as its site's releases showed for its class, classes stay balanced."""

import pytest
import torch

from server.pool import pool_weights, signal_problem

LABELS = [torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1])]


def test_weights_follow_the_squared_signal_with_mean_one_per_class():
    weights = pool_weights(LABELS, [[3.0, 1.0], [1.0, 0.0]], num_classes=2, weighting="signal")
    assert weights.tolist() == pytest.approx([1.8, 1.8, 2.0, 2.0, 0.2, 0.2, 0.0, 0.0])  # 9 : 1 for class 0
    pooled = torch.cat(LABELS)
    for c in range(2):
        assert weights[pooled == c].mean() == pytest.approx(1.0)


def test_snr_divides_each_sites_signal_by_its_noise_multiplier():
    """Equal signal, σ 1 against 3: the noisier site's releases have 9× the variance, its images 1/9 the weight."""
    weights = pool_weights(LABELS, [[3.0, 1.0], [3.0, 1.0]], num_classes=2, weighting="snr", noise_multipliers=[1.0, 3.0])
    assert weights.tolist() == pytest.approx([1.8, 1.8, 1.8, 1.8, 0.2, 0.2, 0.2, 0.2])
    same_sigma = pool_weights(LABELS, [[3.0, 1.0], [1.0, 0.0]], num_classes=2, weighting="snr", noise_multipliers=[2.0, 2.0])
    assert same_sigma.tolist() == pytest.approx(pool_weights(LABELS, [[3.0, 1.0], [1.0, 0.0]], 2, "signal").tolist())


def test_snr_without_noise_multipliers_is_refused():
    with pytest.raises(ValueError, match="noise multiplier"):
        pool_weights(LABELS, [[3.0, 1.0], [1.0, 0.0]], num_classes=2, weighting="snr")


def test_a_site_without_noise_outweighs_a_noisy_one_and_all_noiseless_is_signal_weighting():
    weights = pool_weights(LABELS, [[1.0, 1.0], [5.0, 5.0]], num_classes=2, weighting="snr", noise_multipliers=[0.0, 1.0])
    assert weights.tolist() == pytest.approx([2.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0])
    noiseless = pool_weights(LABELS, [[3.0, 1.0], [1.0, 0.0]], num_classes=2, weighting="snr", noise_multipliers=[0.0, 0.0])
    assert noiseless.tolist() == pytest.approx([1.8, 1.8, 2.0, 2.0, 0.2, 0.2, 0.0, 0.0])


@pytest.mark.parametrize("weighting", ["signal", "snr"])
def test_a_class_no_site_showed_signal_for_keeps_uniform_weights(weighting):
    weights = pool_weights(LABELS, [[2.0, 0.0], [2.0, 0.0]], num_classes=2, weighting=weighting,
                           noise_multipliers=[1.0, 1.0])
    assert weights.tolist() == pytest.approx([1.0] * 8)
    class_one = torch.cat(LABELS) == 1
    noisier = pool_weights(LABELS, [[2.0, 0.0], [2.0, 0.0]], 2, weighting, noise_multipliers=[1.0, 2.0])
    assert noisier[class_one].tolist() == pytest.approx([1.0] * 4)


@pytest.mark.parametrize("signals,weighting", [([[3.0, 1.0], None], "signal"), ([[3.0, 1.0], None], "snr"),
                                               ([[3.0, 1.0], [1.0, 0.0]], "uniform")])
def test_uniform_when_asked_or_when_a_site_sent_no_signal(signals, weighting):
    assert pool_weights(LABELS, signals, num_classes=2, weighting=weighting) is None


def test_unknown_weighting_is_refused():
    with pytest.raises(ValueError, match="unknown pool weighting"):
        pool_weights(LABELS, [[1.0, 1.0]] * 2, num_classes=2, weighting="count")


@pytest.mark.parametrize("claim,problem", [({}, None), ({"class_signal": [0, 2.5]}, None),
                                           ({"class_signal": [1.0]}, "schema"), ({"class_signal": [1.0, float("nan")]}, "values"),
                                           ({"class_signal": {"0": 1.0, "1": 1.0}}, "schema")])
def test_signal_problems_are_named(claim, problem):
    found = signal_problem(claim, num_classes=2)
    assert (found is None) if problem is None else found.startswith(problem)
