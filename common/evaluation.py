"""How good is a synthetic set: train fresh ConvNets on it (with augmentation) and test on real data."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fedsynth.common.augment import Augmenter
from fedsynth.common.data import ImageDataset, to_model_space
from fedsynth.common.models import ConvNet
from fedsynth.common.synthetic_set import weights_problem


@dataclass(frozen=True)
class TrainConfig:
    """Evaluation protocol: ConvNet-128, SGD 0.01 momentum 0.9, wd 5e-4, lr ÷10 at half (dataset condensation's).

    No augmentation by default: on DP sets it costs accuracy. Measured on the bench's
    ε = 1 IPC-10 set, one seed: 71.7 % without, 66.8 % with the distillation's DSA
    (61.9 % at 1000 epochs), 68.0 % with mild crop/scale/rotate/flip.
    """

    epochs: int = 300
    batch_size: int = 256
    lr: float = 0.01
    width: int = 128
    depth: int = 3
    norm: str = "instancenorm"
    augment: bool = False


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: TrainConfig,
    seed: int,
    device: torch.device = torch.device("cpu"),
    weights: torch.Tensor | None = None,
) -> ConvNet:
    """Train a fresh ConvNet on pixel-space `images`; seeded init, order and augmentation.

    `weights` (one per image, mean 1 for the usual step size) scale each image's loss: the server
    trusts an image as much as the evidence its site's releases carried for its class.
    """
    if weights is not None and (problem := weights_problem(weights, labels)):
        raise ValueError(problem)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    c, h, _ = images.shape[1:]
    net = ConvNet(c, num_classes, h, config.width, config.depth, config.norm).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[config.epochs // 2], gamma=0.1)
    x_all, y_all = to_model_space(images).to(device), labels.to(device)
    w_all = None if weights is None else weights.to(device, torch.float32)
    augmenter = Augmenter() if config.augment else None
    net.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(y_all), generator=gen).to(device)
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            x = x_all[idx]
            if augmenter is not None:
                x = augmenter.apply(x, augmenter.sample(gen, per_example=len(idx)))
            opt.zero_grad(set_to_none=True)
            if w_all is None:
                loss = F.cross_entropy(net(x), y_all[idx])
            else:
                loss = (w_all[idx] * F.cross_entropy(net(x), y_all[idx], reduction="none")).mean()
            loss.backward()
            opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: torch.nn.Module, test: ImageDataset, device: torch.device = torch.device("cpu"),
             batch: int = 1000) -> float:
    """Fraction of `test` classified correctly."""
    net.eval()
    correct = 0
    for start in range(0, len(test), batch):
        x = to_model_space(test.images[start : start + batch]).to(device)
        correct += int((net(x).argmax(1).cpu() == test.labels[start : start + batch]).sum())
    return correct / max(1, len(test))


def front_end_accuracies(models: Sequence[torch.nn.Module], test: ImageDataset, batch: int = 1000) -> list[float]:
    """Test accuracy of each model on one front end (`FrontEndClassifier`, `FrontEndVote`: its `front_end`, then
    `classify`), the test images through that front end once: most of an evaluation's time."""
    front_end = models[0].front_end
    if any(type(m.front_end) is not type(front_end) or m.front_end.image_shape != front_end.image_shape
           for m in models):
        raise ValueError("the models must share one front end")
    for model in models:
        model.eval()
    correct = [0] * len(models)
    with torch.no_grad():
        for start in range(0, len(test), batch):
            features = front_end(test.images[start : start + batch])
            truth = test.labels[start : start + batch]
            for i, model in enumerate(models):
                correct[i] += int((model.classify(features).argmax(1).cpu() == truth).sum())
    return [c / max(1, len(test)) for c in correct]


def evaluate_on_front_end(
    images: torch.Tensor,
    labels: torch.Tensor,
    test: ImageDataset,
    front_end: str,
    soft_labels: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    sites: torch.Tensor | None = None,
    class_counts: torch.Tensor | None = None,
    temperatures: torch.Tensor | None = None,
    aggregation: str | None = None,
) -> dict:
    """Test accuracy of the linear head fitted in closed form on the front end's features of the set (one fit:
    deterministic, so one 'seed'); with `sites` and `class_counts` (a pool whose round joined its sites' heads),
    the sites' heads are fitted apart and joined as the round joined them, by its rule `aggregation`
    (`fedsynth.common.front_end.join`; the votes need each site's soft-label `temperatures`)."""
    from fedsynth.common.front_end import build_front_end
    from fedsynth.common.front_end.fit import fit_head
    from fedsynth.common.front_end.join import fit_joined

    if sites is not None and aggregation is None:
        raise ValueError("a pool of joined sites needs the rule that joined them (aggregation)")
    fe = build_front_end(front_end, test.image_shape)
    if sites is None:
        aggregation = "union"
        model = fit_head(fe, images, labels, test.num_classes, soft_labels, weights)
    else:
        model = fit_joined(fe, images, labels, soft_labels, sites, class_counts, test.num_classes, aggregation,
                           temperatures)
    score = accuracy(model, test)
    return {"accuracy_mean": score, "accuracy_std": 0.0, "accuracies": [score], "seeds": [0],
            "train_config": {"model": f"{front_end} + ridge head", "soft_labels": soft_labels is not None},
            "weighted": weights is not None, "aggregation": aggregation}


def seed_summary(scores: Sequence[float]) -> dict:
    """Accuracy mean ± std (0 for one) of models trained with seeds 0, 1, …, in the order of `scores`."""
    return {"accuracy_mean": statistics.fmean(scores),
            "accuracy_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "accuracies": list(scores), "seeds": list(range(len(scores)))}


def evaluate_cnn_head(
    images: torch.Tensor,
    labels: torch.Tensor,
    test: ImageDataset,
    front_end: str,
    soft_labels: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    seeds: int = 3,
) -> dict:
    """Test accuracy mean ± std over `seeds` CNN heads (`fedsynth.common.front_end.cnn_head`) trained on the front
    end's features of the set, toward its soft labels if it has them."""
    from fedsynth.common.front_end import build_front_end
    from fedsynth.common.front_end.cnn_head import CnnHeadConfig, train_cnn_head

    if seeds < 1:
        raise ValueError("need at least one seed")
    fe = build_front_end(front_end, test.image_shape)
    config = CnnHeadConfig()
    models = [train_cnn_head(fe, images, labels, test.num_classes, soft_labels, weights, config, seed)
              for seed in range(seeds)]
    scores = front_end_accuracies(models, test)
    return {**seed_summary(scores),
            "train_config": {"model": f"{front_end} + CNN head", **config.__dict__,
                             "soft_labels": soft_labels is not None},
            "weighted": weights is not None}


def evaluate_synthetic(
    images: torch.Tensor,
    labels: torch.Tensor,
    test: ImageDataset,
    seeds: int = 3,
    config: TrainConfig = TrainConfig(),
    device: torch.device = torch.device("cpu"),
    progress: bool = True,
    weights: torch.Tensor | None = None,
) -> dict:
    """Test accuracy mean ± std over `seeds` freshly trained networks (each image's loss scaled by `weights`, if
    given)."""
    if seeds < 1:
        raise ValueError("need at least one seed")
    if images.shape[1:] != test.images.shape[1:]:
        raise ValueError(f"synthetic images {tuple(images.shape[1:])} do not match "
                         f"test images {tuple(test.images.shape[1:])}")
    scores = []
    for seed in tqdm(range(seeds), desc="evaluating", unit="net", disable=not progress):
        net = train_classifier(images, labels, test.num_classes, config, seed, device, weights)
        scores.append(accuracy(net, test, device))
    return {**seed_summary(scores), "train_config": config.__dict__, "weighted": weights is not None}
