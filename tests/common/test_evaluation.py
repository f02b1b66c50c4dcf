"""The evaluation protocol: networks trained on a set really learn, and augmentation is applied only when asked."""

import pytest
import torch

import fedsynth.common.evaluation as evaluation
from fedsynth.common.augment import Augmenter
from fedsynth.common.data import load_mnist5k
from fedsynth.common.evaluation import (TrainConfig, accuracy, evaluate_on_front_end, evaluate_synthetic,
                                        front_end_accuracies)

FAST = dict(epochs=15, width=16, depth=2)


def _counting_augmenter(monkeypatch) -> list[int]:
    calls = []
    original = Augmenter.apply
    monkeypatch.setattr(Augmenter, "apply", lambda self, x, params: calls.append(len(x)) or original(self, x, params))
    return calls


def test_no_augmentation_by_default_and_dsa_when_asked(tiny_mnist, monkeypatch):
    calls = _counting_augmenter(monkeypatch)
    images, labels = tiny_mnist.images[::3], tiny_mnist.labels[::3]
    plain = evaluation.train_classifier(images, labels, 10, TrainConfig(**FAST), seed=0)
    assert calls == [] and TrainConfig().augment is False
    augmented = evaluation.train_classifier(images, labels, 10, TrainConfig(**FAST, augment=True), seed=0)
    assert sum(calls) == FAST["epochs"] * len(labels)  # every image of every epoch, once
    assert not torch.equal(plain.classifier.weight, augmented.classifier.weight)


def test_a_set_of_real_images_trains_a_useful_network(tiny_mnist):
    test = load_mnist5k(train=False)
    result = evaluate_synthetic(tiny_mnist.images, tiny_mnist.labels, test, seeds=2, config=TrainConfig(**FAST),
                                progress=False)
    assert result["accuracy_mean"] > 0.6  # 30 real digits per class; chance is 0.1
    assert len(result["accuracies"]) == 2 and result["train_config"]["augment"] is False


def test_an_image_of_weight_zero_has_no_influence(tiny_mnist):
    images, labels = tiny_mnist.images[::3].clone(), tiny_mnist.labels[::3]
    weights = torch.ones(len(labels))
    weights[::2] = 0.0
    other = images.clone()
    other[::2] = torch.rand(other[::2].shape, generator=torch.Generator().manual_seed(1))
    config = TrainConfig(**FAST)
    a = evaluation.train_classifier(images, labels, 10, config, seed=0, weights=weights)
    b = evaluation.train_classifier(other, labels, 10, config, seed=0, weights=weights)
    assert torch.allclose(a.classifier.weight, b.classifier.weight, atol=1e-6)
    c = evaluation.train_classifier(other, labels, 10, config, seed=0)
    assert not torch.allclose(a.classifier.weight, c.classifier.weight, atol=1e-3)  # control: unweighted, they count


@pytest.mark.parametrize("weights, reason", [
    (torch.tensor([1.0, -1.0, 1.0, 1.0]), "finite and non-negative"),
    (torch.tensor([1.0, float("nan"), 1.0, 1.0]), "finite and non-negative"),
    (torch.ones(3), "one float per image"),
    (torch.ones(4, dtype=torch.int64), "one float per image"),
])
def test_bad_weights_are_refused(tiny_mnist, weights, reason):
    with pytest.raises(ValueError, match=reason):
        evaluation.train_classifier(tiny_mnist.images[:4], tiny_mnist.labels[:4], 10, TrainConfig(**FAST), seed=0,
                                    weights=weights)


def test_evaluate_trains_with_the_weights_it_is_given(tiny_mnist):
    """Only class 0's images weigh anything: every network then answers 0, ≈ 10 % on the test set."""
    test = load_mnist5k(train=False)
    weights = (tiny_mnist.labels == 0).float()
    result = evaluate_synthetic(tiny_mnist.images, tiny_mnist.labels, test, seeds=1, config=TrainConfig(**FAST),
                                progress=False, weights=weights)
    assert result["weighted"] is True and result["accuracy_mean"] < 0.2


def test_front_end_accuracies_score_each_model_as_its_own_forward_does(tiny_mnist):
    """One pass of the test set through the shared front end scores a ridge head and a two-site vote exactly
    as `accuracy` (each model's own front end, its forward) does; models on different front ends are refused."""
    from fedsynth.common.front_end import build_front_end
    from fedsynth.common.front_end.fit import fit_head
    from fedsynth.common.front_end.join import fit_joined

    fe = build_front_end("scatter", (1, 28, 28))
    images, labels = tiny_mnist.images[::3], tiny_mnist.labels[::3]
    soft = torch.nn.functional.one_hot(labels, 10).float() * 0.9 + 0.01
    head = fit_head(fe, images, labels, 10, soft)
    sites = torch.arange(len(labels)) % 2
    vote = fit_joined(fe, images, labels, soft, sites, torch.ones(2, 10), 10, "vote", torch.tensor([1.0, 2.0]))
    gated = fit_joined(fe, images, labels, soft, sites, torch.rand(2, 10, generator=torch.Generator().manual_seed(0)),
                       10, "gated", torch.tensor([1.0, 2.0]))
    got = front_end_accuracies([head, vote, gated], tiny_mnist, batch=64)
    assert got == [accuracy(head, tiny_mnist), accuracy(vote, tiny_mnist), accuracy(gated, tiny_mnist)]
    assert got[0] != got[1]  # two different models: the scores are not one model's read twice
    with pytest.raises(ValueError, match="share one front end"):
        front_end_accuracies([head, fit_head(build_front_end("none", (1, 28, 28)), images, labels, 10)], tiny_mnist)


def test_a_joined_pool_is_scored_by_its_own_rule_and_refused_without_one(tiny_mnist):
    images, labels = tiny_mnist.images[::3], tiny_mnist.labels[::3]
    soft = torch.nn.functional.one_hot(labels, 10).float() * 0.9 + 0.01
    sites, counts = torch.arange(len(labels)) % 2, torch.ones(2, 10)
    joined = evaluate_on_front_end(images, labels, tiny_mnist, "scatter", soft, sites=sites, class_counts=counts,
                                   aggregation="consensus")
    assert joined["aggregation"] == "consensus" and 0.0 <= joined["accuracy_mean"] <= 1.0
    with pytest.raises(ValueError, match="needs the rule"):
        evaluate_on_front_end(images, labels, tiny_mnist, "scatter", soft, sites=sites, class_counts=counts)
