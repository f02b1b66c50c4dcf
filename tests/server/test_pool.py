"""Pool weights: each image counts as much as its site's releases showed for its class, classes stay balanced."""

import pytest
import torch
from helpers import grid_set, make_claim

from fedsynth.server.pool import choose_weighting, median_run_snr, pool_weights, release_noise

LABELS = [torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1])]


def test_weights_follow_the_squared_signal_with_mean_one_per_class():
    weights = pool_weights(LABELS, [[3.0, 1.0], [1.0, 0.0]], num_classes=2, weighting="signal")
    assert weights.tolist() == pytest.approx([1.8, 1.8, 2.0, 2.0, 0.2, 0.2, 0.0, 0.0])  # 9 : 1 for class 0
    pooled = torch.cat(LABELS)
    for c in range(2):
        assert weights[pooled == c].mean() == pytest.approx(1.0)


def test_matched_weighs_by_signal_times_the_released_norm_over_the_noise_energy():
    """w ∝ S·√(S² + ν²)/ν²: S 3 and 4 at ν = 4 weigh 3·5 : 4·√32, i.e. 15 : 22.63."""
    weights = pool_weights(LABELS, [[3.0, 1.0], [4.0, 1.0]], num_classes=2, weighting="matched", noise=[4.0, 4.0])
    ratio = 3 * 5 / (4 * 32 ** 0.5)
    assert weights[0] / weights[4] == pytest.approx(ratio)
    assert weights[torch.cat(LABELS) == 0].mean() == pytest.approx(1.0)


def test_matched_is_linear_in_signal_under_heavy_noise_and_quadratic_under_little():
    heavy = pool_weights(LABELS, [[1.0, 1.0], [2.0, 1.0]], num_classes=2, weighting="matched", noise=[1e4, 1e4])
    assert heavy[4] / heavy[0] == pytest.approx(2.0, rel=1e-6)  # ∝ S: small ε, every image still counts
    light = pool_weights(LABELS, [[1.0, 1.0], [2.0, 1.0]], num_classes=2, weighting="matched", noise=[1e-3, 1e-3])
    assert light[4] / light[0] == pytest.approx(4.0, rel=1e-4)  # ∝ S²: the signal weighting's regime
    noisier_site = pool_weights(LABELS, [[2.0, 1.0], [2.0, 1.0]], num_classes=2, weighting="matched",
                                noise=[10.0, 20.0])
    # the same signal under twice the noise, noise-dominated: ≈ half the weight (2·√104/100 : 2·√404/400)
    assert noisier_site[0] / noisier_site[4] == pytest.approx((104 ** 0.5 / 100) / (404 ** 0.5 / 400))


def test_matched_falls_back_to_uniform_without_every_sites_release_noise():
    assert pool_weights(LABELS, [[3.0, 1.0], [4.0, 1.0]], num_classes=2, weighting="matched") is None
    assert pool_weights(LABELS, [[3.0, 1.0], [4.0, 1.0]], num_classes=2, weighting="matched", noise=[4.0, None]) is None


def test_release_noise_is_sigma_times_root_dimension():
    images, labels = grid_set()
    assert release_noise(make_claim(images, labels, sigma=2.0, release_dimension=25)) == pytest.approx(10.0)


def test_median_run_snr_is_releases_times_signal_energy_over_noise_energy():
    # cells T·S²/ν²: site 0 (T 100, ν 10): 9, 1; site 1 (T 25, ν 5): 16, 0 → median of 0, 1, 9, 16 = 5
    assert median_run_snr([[3.0, 1.0], [4.0, 0.0]], noise=[10.0, 5.0], releases=[100, 25]) == pytest.approx(5.0)
    assert median_run_snr([[3.0, 1.0], [4.0, 0.0]], noise=[10.0, None], releases=[100, 25]) is None
    assert median_run_snr([[3.0, 1.0], [4.0, 0.0]], noise=[10.0, 5.0], releases=None) is None


def test_auto_weighs_as_matched_only_where_most_cells_carried_more_signal_than_noise():
    signals, noise = [[3.0, 1.0], [4.0, 1.0]], [40.0, 40.0]  # per release S²/ν² ≈ 0.0006–0.01
    # 100 releases: cells 0.56, 0.06, 1.0, 0.06 → median 0.31 < 1: the releases were mostly noise
    assert choose_weighting("auto", median_run_snr(signals, noise, releases=[100, 100])) == "uniform"
    assert pool_weights(LABELS, signals, 2, "auto", noise=noise, releases=[100, 100]) is None
    # the same releases, 1000 of them: cells 5.6, 0.6, 10, 0.6 → median 3.1 ≥ 1
    assert choose_weighting("auto", median_run_snr(signals, noise, releases=[1000, 1000])) == "matched"
    assert pool_weights(LABELS, signals, 2, "auto", noise=noise, releases=[1000, 1000]).tolist() == pytest.approx(
        pool_weights(LABELS, signals, 2, "matched", noise=noise).tolist())
    # one loud cell does not flip it: the median, not the mean
    assert choose_weighting("auto", median_run_snr([[300.0, 1.0], [1.0, 1.0]], noise, releases=[100, 100])) == "uniform"


def test_auto_is_uniform_without_what_it_needs_and_other_weightings_pass_through():
    assert choose_weighting("auto", median_run_snr([[3.0, 1.0], None], [1.0, 1.0], [100, 100])) == "uniform"
    assert choose_weighting("auto", median_run_snr([[3.0, 1.0], [3.0, 1.0]], [1.0, 1.0], [100, None])) == "uniform"
    assert choose_weighting("signal", None) == "signal"
    with pytest.raises(ValueError, match="unknown pool weighting"):
        choose_weighting("count")


@pytest.mark.parametrize("weighting", ["signal", "matched"])
def test_a_class_no_site_showed_signal_for_keeps_uniform_weights(weighting):
    weights = pool_weights(LABELS, [[2.0, 0.0], [2.0, 0.0]], num_classes=2, weighting=weighting, noise=[1.0, 1.0])
    assert weights.tolist() == pytest.approx([1.0] * 8)
    class_one = torch.cat(LABELS) == 1
    noisier = pool_weights(LABELS, [[2.0, 0.0], [2.0, 0.0]], 2, weighting, noise=[1.0, 2.0])
    assert noisier[class_one].tolist() == pytest.approx([1.0] * 4)


@pytest.mark.parametrize("signals,weighting", [([[3.0, 1.0], None], "signal"), ([[3.0, 1.0], None], "matched"),
                                               ([[3.0, 1.0], [1.0, 0.0]], "uniform")])
def test_uniform_when_asked_or_when_a_site_sent_no_signal(signals, weighting):
    assert pool_weights(LABELS, signals, num_classes=2, weighting=weighting) is None


def test_unknown_weighting_is_refused():
    with pytest.raises(ValueError, match="unknown pool weighting"):
        pool_weights(LABELS, [[1.0, 1.0]] * 2, num_classes=2, weighting="count")
