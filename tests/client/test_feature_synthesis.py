"""Synthesis through the front end: the captured share of the head's logit map, and soft labels."""

import torch

from fedsynth.client.feature_synthesis import captured_fraction, centred_logit_map, soft_labels, synthesise
from fedsynth.client.head_training import linear_head
from fedsynth.common.front_end import build_front_end


def _head(d=20, k=3, seed=0):
    torch.manual_seed(seed)
    head = linear_head(d, k)
    torch.nn.init.normal_(head.weight)
    torch.nn.init.normal_(head.bias)
    return head


def test_features_spanning_the_logit_map_capture_all_of_it_and_unrelated_ones_little():
    head = _head()
    m = centred_logit_map(head)
    assert torch.allclose(m.sum(0), torch.zeros(m.shape[1]), atol=1e-5)
    spanning = m[:, :-1] + 0.0  # the rows themselves (the bias column comes from the constant)
    assert float(captured_fraction(spanning, m, ridge=1e-6)) > 0.99
    orthogonal = torch.randn(3, 20, generator=torch.Generator().manual_seed(1))
    orthogonal -= (orthogonal @ torch.linalg.pinv(m[:, :-1])) @ m[:, :-1]  # remove the rows' span
    assert float(captured_fraction(orthogonal, m, ridge=1e-6)) < 0.05


def test_synthesis_raises_the_captured_share_and_soft_labels_are_distributions():
    front_end = build_front_end("scatter", (1, 28, 28))
    head = _head(front_end.feature_dim, 3)
    labels = torch.arange(3).repeat_interleave(2)
    initial = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.5
    m = centred_logit_map(head)
    before = float(captured_fraction(front_end(torch.sigmoid(initial)), m))
    images = synthesise(head, front_end, labels, steps=15, schedule="cosine", initial=initial, class_pull=0.2)
    after = float(captured_fraction(front_end(images), m))
    assert after > before
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    soft = soft_labels(head, front_end, images, temperature=4.0)
    assert soft.dtype == torch.float32 and soft.shape == (6, 3)
    assert torch.allclose(soft.sum(1), torch.ones(6), atol=1e-5)


def test_without_class_pull_the_images_ignore_their_labels_and_with_it_they_follow_them():
    front_end = build_front_end("scatter", (1, 28, 28))
    head = _head(front_end.feature_dim, 3)
    labels = torch.arange(3).repeat_interleave(2)
    swapped = labels.flip(0)
    initial = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.5

    def run(lab, pull):
        return synthesise(head, front_end, lab, steps=6, schedule="cosine", initial=initial, class_pull=pull)

    assert torch.equal(run(labels, 0.0), run(swapped, 0.0))
    pulled, pulled_swapped = run(labels, 0.5), run(swapped, 0.5)
    assert not torch.allclose(pulled, pulled_swapped)
    own = head(front_end(pulled)).gather(1, labels[:, None]).mean()
    other = head(front_end(pulled_swapped)).gather(1, labels[:, None]).mean()
    assert own > other  # the pull raised each image's score for the label it was given


def test_the_cosine_schedule_halves_the_rate_by_mid_run_and_the_constant_one_keeps_it():
    front_end = build_front_end("scatter", (1, 28, 28))
    head = _head(front_end.feature_dim, 3)
    labels = torch.arange(3).repeat_interleave(2)
    initial = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.5

    def by_hand(rates):  # Adam on the captured share at the given rate per step
        logits = initial.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([logits], lr=rates[0])
        for rate in rates:
            optimizer.param_groups[0]["lr"] = rate
            loss = 1.0 - captured_fraction(front_end(torch.sigmoid(logits)), centred_logit_map(head))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return torch.sigmoid(logits.detach())

    for schedule, rates in (("cosine", [0.1, 0.05]), ("constant", [0.05, 0.05])):
        images = synthesise(head, front_end, labels, steps=2, schedule=schedule, initial=initial, class_pull=0.0)
        assert torch.allclose(images, by_hand(rates), atol=1e-6), schedule
    assert not torch.allclose(by_hand([0.1, 0.05]), by_hand([0.1, 0.1]), atol=1e-6)  # the rates tell them apart
