"""The front-end engine end to end on small real data: one DP-SGD run spent and released once, the data path blind."""

import math

import pytest
import torch

import fedsynth.client.engine as engine
from fedsynth.client.config import auto_value
from fedsynth.client.engine import DistillConfig, EngineError, distill, plan, releases_before_head
from fedsynth.common.data import ImageDataset
from fedsynth.common.ledger import Ledger
from fedsynth.common.synthetic_set import content_hash, load_synthetic_set, on_8bit_grid, soft_label_problem

TINY = dict(front_end="scatter", ipc=1, head_epochs=2.0, head_batch=60.0, synthesis_steps=4, epsilon=4.0,
            mean_releases=2)


def _run(dataset, tmp_path, name="out", ledger=None, secret_seed=0, **overrides):
    config = DistillConfig(**{**TINY, **overrides})
    ledger = ledger or Ledger.open(tmp_path / f"{name}.jsonl", budget_epsilon=math.inf)
    return distill(dataset, config, ledger, tmp_path / name, device="cpu", secret_seed=secret_seed, progress=False)


def test_a_scatter_run_spends_one_dp_sgd_run_and_releases_images_with_soft_labels(tiny_mnist, tmp_path):
    ledger = Ledger.open(tmp_path / "site.jsonl", budget_epsilon=math.inf)
    result = _run(tiny_mnist, tmp_path, ledger=ledger)
    claim, synthetic = result.synthetic.claim, result.synthetic
    q = 60 / len(tiny_mnist)
    assert claim.front_end == "scatter" and claim.soft_labels
    # the head's ⌈epochs / q⌉ DP-SGD steps, then the class histogram and the mean feature's releases: more
    # releases of the same mechanism
    assert releases_before_head(DistillConfig(**TINY)) == 3
    assert claim.sample_rate == pytest.approx(q) and claim.releases == math.ceil(2.0 / q) + 3
    true_counts = torch.bincount(tiny_mnist.labels, minlength=10).double()
    sd = claim.noise_multiplier / q  # the histogram's noise in records, before the Poisson sampling's own
    assert len(claim.class_counts) == 10
    assert (torch.tensor(claim.class_counts) - true_counts).abs().max() < 5 * (sd**2 + true_counts.max() / q) ** 0.5
    assert claim.epsilon <= 4.0
    assert claim.release_dimension == 81 * 7 * 7 * 10 + 10
    (spend,) = [e for e in ledger.entries() if e["kind"] == "spend"]
    assert spend["mechanism"] == claim.mechanism.to_dict()
    assert ledger.released(claim.run_id)
    assert on_8bit_grid(synthetic.images) and synthetic.images.shape == (10, 1, 28, 28)
    assert soft_label_problem(synthetic.soft_labels, synthetic.labels, 10) is None
    assert claim.sha256 == content_hash(synthetic.images, synthetic.labels, synthetic.soft_labels)
    assert claim.sha256 != content_hash(synthetic.images, synthetic.labels)  # the soft labels are bound too
    kept = load_synthetic_set(result.out_dir)
    assert torch.equal(kept.soft_labels, synthetic.soft_labels) and kept.claim == claim


def test_the_plan_is_epochs_over_q_steps_and_a_run_that_cannot_finish_is_refused(tiny_mnist):
    the_plan = plan(tiny_mnist, DistillConfig(**{**TINY, "head_epochs": 20.0, "head_batch": 30.0}))
    assert the_plan.mechanism.steps == 200 + 1 + 2  # and the class histogram and the mean feature
    no_mean = plan(tiny_mnist, DistillConfig(**{**TINY, "head_epochs": 20.0, "head_batch": 30.0, "mean_releases": 0}))
    assert no_mean.mechanism.steps == 200 + 1
    assert no_mean.mechanism.noise_multiplier < the_plan.mechanism.noise_multiplier  # the same ε over fewer releases
    with pytest.raises(EngineError, match="no run of that length finishes"):
        plan(tiny_mnist, DistillConfig(**{**TINY, "head_epochs": 10_000.0, "sample_rate": 0.001}))


def test_auto_head_settings_run_at_their_value_for_the_target_epsilon_and_the_claim_records_the_numbers(
        tiny_mnist, tmp_path):
    result = _run(tiny_mnist, tmp_path, head_epochs="auto", head_lr="auto", synthesis_steps=2)
    claim = result.synthetic.claim
    epochs, lr = auto_value("head_epochs", 4.0), auto_value("head_lr", 4.0)
    assert claim.config["head_epochs"] == epochs and claim.config["head_lr"] == lr
    assert claim.releases == math.ceil(epochs / (60 / len(tiny_mnist))) + 3
    assert plan(tiny_mnist, DistillConfig(**{**TINY, "head_epochs": "auto"})).mechanism == claim.mechanism


def _scrambled(dataset: ImageDataset, seed: int) -> ImageDataset:
    gen = torch.Generator().manual_seed(seed)
    return ImageDataset(torch.rand(dataset.images.shape, generator=gen),
                        torch.randint(0, 10, dataset.labels.shape, generator=gen), dataset.classes, "x")


def test_real_data_reaches_the_set_only_through_the_dp_sgd_of_the_head(tiny_mnist, tmp_path, monkeypatch):
    """Blind the real-data paths (the head's DP-SGD, the noisy class histogram and the noisy mean feature):
    images, soft labels and released counts must then not depend on the records."""
    other = _scrambled(tiny_mnist, 1)
    control_a, control_b = _run(tiny_mnist, tmp_path, "ca").synthetic, _run(other, tmp_path, "cb").synthetic
    assert not torch.equal(control_a.soft_labels, control_b.soft_labels), "control: the records do shape the set"
    assert control_a.claim.class_counts != control_b.claim.class_counts, "control: and the released counts"

    original_head, original_counts, original_mean = engine.train_head, engine.noisy_class_counts, \
        engine.noisy_feature_mean
    monkeypatch.setattr(engine, "train_head", lambda features, labels, *a, **kw: original_head(
        torch.zeros_like(features), torch.zeros_like(labels), *a, **kw))
    monkeypatch.setattr(engine, "noisy_class_counts", lambda labels, *a, **kw: original_counts(
        torch.zeros_like(labels), *a, **kw))
    monkeypatch.setattr(engine, "noisy_feature_mean", lambda features, *a, **kw: original_mean(
        torch.zeros_like(features), *a, **kw))
    blind_a, blind_b = _run(tiny_mnist, tmp_path, "ba").synthetic, _run(other, tmp_path, "bb").synthetic
    assert torch.equal(blind_a.images, blind_b.images)
    assert torch.equal(blind_a.soft_labels, blind_b.soft_labels)
    assert blind_a.claim.class_counts == blind_b.claim.class_counts


class Crash(Exception):
    pass


@pytest.mark.parametrize("where", ["train_head", "synthesise"])
def test_a_crash_resumes_with_one_spend_and_the_same_set(tiny_mnist, tmp_path, monkeypatch, where):
    ledger = Ledger.open(tmp_path / "site.jsonl", budget_epsilon=math.inf)
    reference = _run(tiny_mnist, tmp_path, "ref", secret_seed=5).synthetic

    def crash(*args, **kwargs):
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(engine, where, crash)
        with pytest.raises(Crash):
            _run(tiny_mnist, tmp_path, "run", ledger=ledger, secret_seed=5)
    resumed = _run(tiny_mnist, tmp_path, "run", ledger=ledger, secret_seed=99).synthetic  # the checkpoint's secret
    assert [e["kind"] for e in ledger.entries()].count("spend") == 1
    assert torch.equal(resumed.images, reference.images) and torch.equal(resumed.soft_labels, reference.soft_labels)


def test_the_front_end_is_probed_before_any_spend(tiny_mnist, tmp_path):
    tiny = ImageDataset(torch.rand(40, 1, 6, 6), torch.arange(10).repeat(4), tiny_mnist.classes, "tiny")
    ledger = Ledger.open(tmp_path / "site.jsonl", budget_epsilon=math.inf)
    with pytest.raises(EngineError, match="scatter front end cannot run"):
        _run(tiny, tmp_path, ledger=ledger, head_batch=10.0)
    assert [e["kind"] for e in ledger.entries()] == ["open"]
