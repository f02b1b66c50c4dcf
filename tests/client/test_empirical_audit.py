"""The canary audit has power (noise off: a clearly positive lower bound), respects the claim under
calibrated noise, and a broken scorer is caught by the same power check."""

import pytest
import torch

from fedsynth.client.engine import DistillConfig
from fedsynth.client.empirical_audit import audit_release, epsilon_lower_bound, release_with_canaries
from fedsynth.common.data import ImageDataset

pytestmark = pytest.mark.slow
CANARIES = 200
POWER_FLOOR = 1.0  # noise off, 200 canaries, 40 guesses: measured 1.7-2.1 (38-39 of 40 right); chance gives 0


def _config(epsilon, iterations=40):
    return DistillConfig(front_end="none", ipc=10, epsilon=epsilon, iterations=iterations, inner_steps=5, width=32,
                         every_class_populated=False, seed=0)


def _empty(like: ImageDataset) -> ImageDataset:
    return ImageDataset(like.images[:0], like.labels[:0], list(like.classes), "no-base")


@pytest.fixture(scope="module")
def mnist_test():
    from fedsynth.common.data import load_mnist5k

    return load_mnist5k(train=False)


@pytest.fixture(scope="module")
def noiseless_release(mnist_test):
    return release_with_canaries(_empty(mnist_test), mnist_test, _config(float("inf")), CANARIES, progress=False)


def _check_power(audit):
    assert audit.empirical_epsilon_lower_bound >= POWER_FLOOR, audit


def test_bound_statistics():
    assert epsilon_lower_bound(20, 40) == 0.0  # chance-level guessing proves nothing
    assert epsilon_lower_bound(40, 40) == pytest.approx(2.56, abs=0.02)  # p^40 = 0.05 → p = 0.928
    assert epsilon_lower_bound(39, 40) < epsilon_lower_bound(40, 40) < epsilon_lower_bound(400, 400)


def test_noise_off_gives_a_clearly_positive_lower_bound(noiseless_release):
    audit = audit_release(noiseless_release)
    assert audit.claimed_epsilon is None  # no noise: ε = ∞
    _check_power(audit)
    assert audit.mia_auc > 0.6


@pytest.mark.parametrize("broken", [
    lambda cx, cy, sx, sy: torch.randn(len(cy), generator=torch.Generator().manual_seed(1)),  # ignores the release
    lambda cx, cy, sx, sy: -torch.cdist(cx.flatten(1), sx.flatten(1)).mean(1),  # ignores the labels
])
def test_broken_canary_scoring_fails_the_power_check(noiseless_release, broken):
    with pytest.raises(AssertionError):
        _check_power(audit_release(noiseless_release, scorer=broken))


def test_calibrated_noise_stays_below_the_claim(mnist_test):
    release = release_with_canaries(_empty(mnist_test), mnist_test, _config(1.0, iterations=20), CANARIES,
                                    progress=False)
    audit = audit_release(release)
    assert audit.claimed_epsilon is not None and audit.claimed_epsilon <= 1.0
    assert audit.empirical_epsilon_lower_bound <= audit.claimed_epsilon


def test_cli_writes_claimed_recomputed_and_empirical_side_by_side(tmp_path):
    import json

    from fedsynth.client.cli import main

    out = tmp_path / "empirical.json"
    code = main(["audit", "--empirical", "--dataset", "mnist5k", "--front-end", "none", "--canaries", "60",
                 "--base-records", "100", "--epsilon", "2", "--steps", "3", "--inner-steps", "2", "--ipc", "2",
                 "--width", "8",
                 "--eval-epochs", "2", "--quiet", "--json", str(out), "--report", str(tmp_path / "r")])
    assert code == 0
    row = json.loads(out.read_text())
    assert {"claimed_epsilon", "empirical_epsilon_lower_bound", "mia_auc", "tpr_at_1pct_fpr"} <= set(row)
    # Opacus RDP claims, the PLD recomputation is tighter: a little below the claim, never above it
    assert (row["claimed_epsilon"] <= 2
            and 0.8 * row["claimed_epsilon"] <= row["recomputed_epsilon"] <= row["claimed_epsilon"])
    assert row["canaries"] == 60 and row["base_records"] == 100 and row["guesses"] == 12
    assert row["seed"] == 0 and "opacus" in row["versions"] and row["config"]["epsilon"] == 2
    assert (tmp_path / "r" / "canary_scores.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["audit", "--empirical", "--canaries", "60"]) == 2  # no data to draw canaries from: clear error


def test_cli_audits_the_scatternet_engine_it_defaults_to(tmp_path):
    import json

    from fedsynth.client.cli import main

    out = tmp_path / "empirical.json"
    code = main(["audit", "--empirical", "--dataset", "mnist5k", "--canaries", "40", "--base-records", "60",
                 "--epsilon", "2", "--ipc", "2", "--head-epochs", "2", "--head-batch", "50", "--synthesis-steps", "5",
                 "--eval-epochs", "2", "--quiet", "--json", str(out), "--report", str(tmp_path / "r")])
    assert code == 0
    row = json.loads(out.read_text())
    # the audited release is the ScatterNet engine's (its one DP-SGD run of the head), accounted as such
    assert row["claim"]["front_end"] == "scatter" and row["config"]["head_batch"] == 50
    assert row["recomputed_epsilon"] <= row["claimed_epsilon"] <= 2
    assert row["empirical_epsilon_lower_bound"] <= row["claimed_epsilon"]


def test_canaries_never_overlap_the_base_records():
    from fedsynth.client.empirical_audit import split_canary_pool
    from fedsynth.common.data import load_mnist5k

    data = load_mnist5k(train=False)
    base, pool = split_canary_pool(data, 100, 300, seed=4)

    def flat(d):
        return {tuple(row.tolist()) for row in (d.images.flatten(1) * 255).round().to(torch.uint8)}

    assert len(base) == 300 and len(pool) == 100 and not flat(base) & flat(pool)
    with pytest.raises(ValueError, match="canaries"):
        split_canary_pool(data, 400, len(data), seed=0)
