"""The class-wise vote: each class scored by the sites that held it, in proportion to their counts."""

import torch

from fedsynth.common.front_end import build_front_end
from fedsynth.common.front_end.vote import FrontEndVote, fit_vote, vote_weights


def test_each_class_is_shared_by_the_sites_counts_of_it_and_negative_noisy_counts_count_as_zero():
    counts = torch.tensor([[30.0, 0.0, -2.0, 0.0], [10.0, 5.0, 4.0, 0.0]])
    w = vote_weights(counts)
    assert torch.allclose(w.sum(0), torch.ones(4, dtype=torch.float64))
    assert w[:, 0].tolist() == [0.75, 0.25] and w[:, 1].tolist() == [0.0, 1.0] and w[:, 2].tolist() == [0.0, 1.0]
    assert w[:, 3].tolist() == [0.5, 0.5]  # no site counted class 3: shared equally


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)


def _vote(logits_a, logits_b, counts):
    """A two-site vote on 'features' = the pixel-space input, site heads given by their logit maps."""
    heads = torch.nn.Linear(2, 2 * 3)
    with torch.no_grad():
        heads.weight.copy_(torch.cat([logits_a, logits_b]))
        heads.bias.zero_()
    return FrontEndVote(_Identity(), heads, vote_weights(counts))


def test_the_score_of_a_class_is_the_count_weighted_probability_the_sites_that_held_it_give_it():
    a = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-5.0, -5.0]])  # site A never held class 2
    b = torch.tensor([[1.0, 1.0], [-1.0, 0.5], [0.5, 2.0]])
    counts = torch.tensor([[100.0, 100.0, 0.0], [50.0, 10.0, 200.0]])
    vote = _vote(a, b, counts)
    features = torch.tensor([[0.3, -0.7], [1.5, 0.2]])
    out = vote(features * 2 - 1)  # the model takes [-1, 1] inputs, the front end sees [0, 1]
    pa, pb = torch.softmax(features @ a.T, 1), torch.softmax(features @ b.T, 1)
    w = counts / counts.sum(0)
    expected = w[0] * pa + w[1] * pb
    assert torch.allclose(out.exp(), expected / expected.sum(1, keepdim=True), atol=1e-6)
    assert torch.allclose(out.logsumexp(1), torch.zeros(2), atol=1e-6)  # log-probabilities
    # class 2's score is site B's alone: what A's head says of class 2 does not enter it directly
    assert torch.allclose(expected[:, 2], pb[:, 2])


def test_fitted_from_one_sites_set_the_vote_is_that_sites_head_at_the_soft_labels_temperature():
    gen = torch.Generator().manual_seed(0)
    front_end = build_front_end("scatter", (1, 28, 28))
    images = torch.rand(20, 1, 28, 28, generator=gen)
    labels = torch.arange(10).repeat(2)
    logits = 3 * torch.randn(20, 10, generator=gen)
    soft = torch.softmax(logits / 4.0, 1)
    sites = torch.zeros(20, dtype=torch.long)
    vote = fit_vote(front_end, images, labels, soft, sites, torch.full((1, 10), 2.0), 10,
                    torch.tensor([4.0], dtype=torch.float64))
    # 20 images, 3970 features: the ridge fit reproduces the logits on its own images (up to a shift per image)
    got = vote(images * 2 - 1)
    want = torch.log_softmax(logits, 1)
    assert torch.allclose(got, want, atol=0.05)
