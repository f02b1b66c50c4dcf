"""Empirical lower bound on ε for the distillation pipeline, from one run (Steinke, Nasr &
Jagielski 2023, "Privacy auditing with one (1) training run").

m canaries — held-out images with random labels, so that nothing but their own inclusion
explains them — are each put in the site's data with probability ½; the engine runs once;
each canary is scored from the released synthetic set only (how much nearer it lies to a
synthetic image of its own label than to one of any other label); the k
highest scores are guessed "in", the k lowest "out". If the pipeline is ε-DP, each guess
is right with probability at most e^ε/(1+e^ε), so the number right is stochastically
dominated by a binomial: the largest ε whose binomial tail still covers the observed count
at 95 % confidence is the lower bound. (This is the paper's δ = 0 bound; with δ = 1e-5 and
a few hundred canaries the correction it omits is below 1e-2 in probability.)

Beside it: a loss-threshold membership-inference attack on a model trained on the release
(AUC and TPR at 1 % FPR), the attack a user would try first.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from scipy.stats import binom

from fedsynth.common.data import ImageDataset, to_model_space
from fedsynth.common.runtime import resolve_device

Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class CanaryAudit:
    claimed_epsilon: float | None
    empirical_epsilon_lower_bound: float
    canaries: int
    included: int
    guesses: int
    correct: int
    confidence: float
    mia_auc: float
    tpr_at_1pct_fpr: float
    seconds: float
    scores: list[float] = field(default_factory=list, repr=False)  # per canary, for the picture
    membership: list[bool] = field(default_factory=list, repr=False)  # the secret coins, revealed after the guess

    def to_dict(self) -> dict:
        out = asdict(self)
        del out["scores"], out["membership"]
        return out


def make_canaries(pool: ImageDataset, m: int, seed: int) -> tuple[ImageDataset, torch.Tensor]:
    """m images from `pool` with uniformly random labels, and the secret in/out coin of each."""
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(pool), generator=gen)[:m]
    labels = torch.randint(0, pool.num_classes, (m,), generator=gen)
    included = torch.rand(m, generator=gen) < 0.5
    return ImageDataset(pool.images[chosen], labels, list(pool.classes), "canaries"), included


def epsilon_lower_bound(correct: int, guesses: int, confidence: float = 0.95) -> float:
    """Largest ε such that P[Binomial(guesses, e^ε/(1+e^ε)) ≥ correct] ≤ 1 − confidence; 0 if none."""
    if guesses == 0:
        return 0.0

    def tail(eps: float) -> float:
        return float(binom.sf(correct - 1, guesses, 1.0 / (1.0 + math.exp(-eps))))

    if tail(0.0) > 1 - confidence:
        return 0.0
    lo, hi = 0.0, 50.0
    for _ in range(100):  # the tail grows with ε: bisect for where it crosses 1 − confidence
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tail(mid) <= 1 - confidence else (lo, mid)
    return lo


def nearest_synthetic_scores(canary_x: torch.Tensor, canary_y: torch.Tensor, synth_x: torch.Tensor,
                             synth_y: torch.Tensor) -> torch.Tensor:
    """Per canary: how much nearer (pixel L2) its nearest synthetic image of its own label is than its
    nearest synthetic image of any other label. Distillation that memorises a canary pulls a
    synthetic image of the canary's (random) label towards it; the other labels calibrate for
    canaries that are near everything."""
    distance = torch.cdist(canary_x.flatten(1), synth_x.flatten(1))
    same = canary_y[:, None] == synth_y[None, :]
    own = distance.masked_fill(~same, math.inf).min(dim=1).values
    other = distance.masked_fill(same, math.inf).min(dim=1).values
    return torch.nan_to_num(other - own, neginf=-1e9, posinf=1e9)


def loss_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, member: torch.Tensor) -> tuple[float, float]:
    """Loss-threshold membership inference on `model`: (AUC, TPR at 1 % FPR); a lower loss means "member"."""
    with torch.no_grad():
        score = -F.cross_entropy(model(to_model_space(x)), y, reduction="none")
    pos, neg = score[member], score[~member]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan"), float("nan")
    # AUC = P(score of a member > score of a non-member), ties counted half (Mann–Whitney)
    auc = ((pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()).mean().item()
    threshold = torch.quantile(neg, 0.99)
    return auc, (pos > threshold).float().mean().item()


@dataclass
class CanaryRelease:
    """The canaries, their secret coins, and what the pipeline released."""

    canaries: ImageDataset
    included: torch.Tensor
    synthetic: "object"  # common.synthetic_set.SyntheticSet
    seconds: float


def release_with_canaries(base: ImageDataset, canary_pool: ImageDataset, config, canaries: int = 200, seed: int = 0,
                          progress: bool = True, device: str = "auto") -> CanaryRelease:
    """Run the engine once on `base` plus the canaries whose coin came up "in"."""
    from fedsynth.client.engine import distill
    from fedsynth.common.ledger import Ledger

    started = time.time()
    canary_set, included = make_canaries(canary_pool, canaries, seed)
    data = ImageDataset(torch.cat([base.images, canary_set.images[included]]),
                        torch.cat([base.labels, canary_set.labels[included]]), list(canary_pool.classes),
                        f"{base.name}+canaries")
    with tempfile.TemporaryDirectory(prefix="fedsynth-audit-") as tmp:
        ledger = Ledger.open(Path(tmp) / "audit-ledger.jsonl", budget_epsilon=math.inf)  # audit data: own ledger
        result = distill(data, config, ledger, Path(tmp) / "release", device=device, progress=progress,
                         dataset_label=data.name)
    return CanaryRelease(canary_set, included, result.synthetic, time.time() - started)


def audit_release(release: CanaryRelease, guess_fraction: float = 0.2, scorer: Scorer = nearest_synthetic_scores,
                  eval_epochs: int = 100, seed: int = 0, device: str = "auto") -> CanaryAudit:
    """Score every canary from the release, guess the top and bottom `guess_fraction / 2`, bound ε;
    then the loss-threshold attack on a model trained on the release."""
    from fedsynth.common.evaluation import TrainConfig, train_classifier

    started = time.time()
    canaries, included, synthetic = release.canaries, release.included, release.synthetic
    score = scorer(canaries.images, canaries.labels, synthetic.images, synthetic.labels)
    k = max(1, int(guess_fraction * len(included) / 2))
    order = torch.argsort(score, descending=True)
    correct = int(included[order[:k]].sum()) + int((~included[order[-k:]]).sum())
    model = train_classifier(synthetic.images, synthetic.labels, canaries.num_classes,
                             TrainConfig(epochs=eval_epochs, width=64, augment=True),  # as bench/audit.json measured
                             seed=seed, device=resolve_device(device)).cpu()
    auc, tpr = loss_attack(model, canaries.images, canaries.labels, included)
    return CanaryAudit(synthetic.claim.epsilon if synthetic.claim.private else None,
                       epsilon_lower_bound(correct, 2 * k), len(included), int(included.sum()), 2 * k, correct,
                       0.95, auc, tpr, release.seconds + time.time() - started,
                       score.tolist(), included.tolist())


def split_canary_pool(data: ImageDataset, canaries: int, base_records: int,
                      seed: int) -> tuple[ImageDataset, ImageDataset]:
    """Disjoint (base, canary pool) from one dataset: the canaries are records the base never holds."""
    if canaries < 2 or canaries + base_records > len(data):
        raise ValueError(f"need 2 <= canaries and canaries + base records <= {len(data)} records, got "
                         f"{canaries} + {base_records}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + 7919))
    return data.subset(order[canaries:canaries + base_records].sort().values), data.subset(order[:canaries])


def recomputed_epsilon(claim) -> float | None:
    """The claim's ε recomputed by dp-accounting's PLD accountant from its mechanism; None for no noise."""
    from fedsynth.common.privacy.independent import pld_epsilon

    return pld_epsilon([claim.mechanism], claim.delta) if claim.private else None


def run_empirical_audit(data: ImageDataset, config, canaries: int = 200, base_records: int = 0,
                        guess_fraction: float = 0.2, eval_epochs: int = 100, progress: bool = True,
                        report_dir: Path | None = None, device: str = "auto") -> dict:
    """The whole `fedsynth audit --empirical`: canaries split off `data`, one release, the bound, the attack;
    returns the result row (claimed, recomputed and empirical ε side by side, with config, versions, seed)."""
    from fedsynth.common.plots import save_canary_scores
    from fedsynth.common.versions import library_versions

    base, pool = split_canary_pool(data, canaries, base_records, config.seed)
    release = release_with_canaries(base, pool, config, canaries, seed=config.seed, progress=progress, device=device)
    audit = audit_release(release, guess_fraction, eval_epochs=eval_epochs, seed=config.seed, device=device)
    row = {**audit.to_dict(), "recomputed_epsilon": recomputed_epsilon(release.synthetic.claim),
           "delta": release.synthetic.claim.delta, "base_records": len(base), "dataset": data.name,
           "claim": release.synthetic.claim.to_json_dict(), "config": asdict(config), "seed": config.seed,
           "versions": library_versions()}
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        save_canary_scores(audit.scores, audit.membership, audit.guesses // 2, report_dir / "canary_scores.png",
                           f"claimed ε={_show(row['claimed_epsilon'])}, empirical lower bound "
                           f"{audit.empirical_epsilon_lower_bound:.2f} ({audit.correct}/{audit.guesses} guesses right)")
    return row


def _show(epsilon: float | None) -> str:
    return "∞ (no noise)" if epsilon is None else f"{epsilon:.3g}"


def summary_table(row: dict) -> str:
    """The terminal table: claimed, independently recomputed and empirical ε side by side."""
    recomputed = "∞" if row["recomputed_epsilon"] is None else f"{row['recomputed_epsilon']:.3f}"
    lines = [
        "| claimed ε | recomputed ε (PLD) | empirical lower bound (95 %) | guesses right | MIA AUC | TPR @ 1 % FPR "
        "| seconds |",
        "|---|---|---|---|---|---|---|",
        f"| {_show(row['claimed_epsilon'])} | {recomputed} | {row['empirical_epsilon_lower_bound']:.3f} | "
        f"{row['correct']}/{row['guesses']} | {row['mia_auc']:.3f} | {row['tpr_at_1pct_fpr']:.3f} | "
        f"{row['seconds']:.0f} |",
    ]
    return "\n".join(lines)
