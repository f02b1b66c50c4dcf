"""The rules a round joins its sites' heads by: each builds its model from the same recovered site maps."""

import pytest
import torch

from fedsynth.common.front_end.join import JOIN_RULES, join_site_maps
from fedsynth.common.front_end.vote import SITE_LOGIT_SCALE, FrontEndVote


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)


MAPS = [torch.randn(3, 5, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in range(2)]
COUNTS = torch.tensor([[20.0, 1.0, 0.0], [2.0, 10.0, 30.0]], dtype=torch.float64)
TEMPERATURES = torch.tensor([4.0, 2.0], dtype=torch.float64)


def test_each_rule_makes_its_model_and_the_votes_differ_only_in_the_gate():
    models = {rule: join_site_maps(_Identity(), MAPS, COUNTS, rule, TEMPERATURES) for rule in JOIN_RULES}
    assert models["consensus"].head.weight.shape == (3, 4)
    gated, vote = models["gated"], models["vote"]
    assert isinstance(gated, FrontEndVote) and gated.gate_iterations > 0 and vote.gate_iterations == 0
    # both votes keep each site's map scaled back by its own soft labels' temperature, then tempered
    scaled = torch.cat([4.0 * MAPS[0][:, :-1], 2.0 * MAPS[1][:, :-1]]) * SITE_LOGIT_SCALE
    assert SITE_LOGIT_SCALE != 1.0 and torch.allclose(vote.heads.weight, scaled.float())
    assert torch.equal(gated.heads.weight, vote.heads.weight)
    x = torch.rand(6, 4, generator=torch.Generator().manual_seed(9))
    assert not torch.allclose(gated.classify(x), vote.classify(x))


def test_an_unknown_rule_or_a_vote_without_temperatures_is_refused():
    with pytest.raises(ValueError, match="unknown rule 'median'"):
        join_site_maps(_Identity(), MAPS, COUNTS, "median", TEMPERATURES)
    for rule in ("gated", "vote"):
        with pytest.raises(ValueError, match="temperature"):
            join_site_maps(_Identity(), MAPS, COUNTS, rule)
    assert join_site_maps(_Identity(), MAPS, COUNTS, "consensus") is not None  # needs none
