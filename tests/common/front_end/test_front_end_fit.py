"""The server's model on a front end: a closed-form ridge head that reproduces the releasing head where it can."""

import torch

from fedsynth.common.data import ImageDataset, to_model_space
from fedsynth.common.evaluation import accuracy
from fedsynth.common.front_end import build_front_end
from fedsynth.common.front_end.fit import fit_head, targets


def _teacher(front_end, seed=0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    head = torch.nn.Linear(front_end.feature_dim, 3)
    head.weight.data *= 5
    return head


def test_soft_labels_of_a_linear_head_teach_its_predictions_on_the_images_it_labelled():
    front_end = build_front_end("scatter", (1, 28, 28))
    images = torch.rand(30, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    teacher = _teacher(front_end)
    with torch.no_grad():
        logits = teacher(front_end(images))
    soft = torch.softmax(logits / 4.0, 1)
    model = fit_head(front_end, images, logits.argmax(1), 3, soft_labels=soft)
    with torch.no_grad():
        fitted = model(to_model_space(images))
    centred = logits / 4.0 - (logits / 4.0).mean(1, keepdim=True)
    assert torch.allclose(fitted, centred, atol=0.05)  # the logits up to a shift, at the release temperature
    test = ImageDataset(images, logits.argmax(1), ["a", "b", "c"], "t")
    assert accuracy(model, test) == 1.0


def test_zero_weight_images_are_left_out_and_hard_labels_give_one_hot_targets():
    front_end = build_front_end("none", (1, 4, 4))
    images = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    flipped = labels.clone()
    flipped[0] = 1
    weights = torch.tensor([0.0, 1, 1, 1, 1, 1])
    a = fit_head(front_end, images, flipped, 2, weights=weights)
    b = fit_head(front_end, images[1:], labels[1:], 2)
    assert torch.allclose(a.head.weight, b.head.weight, atol=1e-5)
    assert torch.equal(targets(torch.tensor([1]), 2), torch.tensor([[-0.5, 0.5]], dtype=torch.float64))


def test_the_primal_form_for_more_images_than_features_agrees_with_the_dual():
    front_end = build_front_end("none", (1, 3, 3))  # 9 features + bias: 40 images take the primal form
    images = torch.rand(40, 1, 3, 3, generator=torch.Generator().manual_seed(3))
    labels = torch.randint(0, 2, (40,), generator=torch.Generator().manual_seed(4))
    many = fit_head(front_end, images, labels, 2)
    y = targets(labels, 2)
    phi = torch.cat([images.flatten(1).double(), torch.ones(40, 1, dtype=torch.float64)], 1)
    dual = phi.T @ torch.linalg.solve(phi @ phi.T + 1e-2 * torch.eye(40, dtype=torch.float64), y)
    assert torch.allclose(many.head.weight.double(), dual[:-1].T, atol=1e-4)
