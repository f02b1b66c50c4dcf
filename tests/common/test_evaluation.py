"""The evaluation protocol: networks trained on a set really learn, and augmentation is applied only when asked."""

import torch

import common.evaluation as evaluation
from common.augment import Augmenter
from common.data import load_mnist5k
from common.evaluation import TrainConfig, evaluate_synthetic

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
