"""Pictures people look at: a grid of synthetic images, one row per class."""

from __future__ import annotations

from pathlib import Path

import torch


def save_image_grid(images: torch.Tensor, labels: torch.Tensor, classes: list[str], path: Path, title: str = "") -> None:
    """PNG with one row per class (its name on the left) and that class's images across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [images[labels == c] for c in range(len(classes))]
    cols = max(1, max(len(r) for r in rows))
    fig, axes = plt.subplots(len(classes), cols, figsize=(0.9 * cols + 1.2, 0.9 * len(classes) + 0.5), squeeze=False)
    for c, row in enumerate(rows):
        for j in range(cols):
            ax = axes[c][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(row):
                img = row[j].clamp(0, 1)
                if img.shape[0] == 1:
                    ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(img.permute(1, 2, 0).numpy())
        axes[c][0].set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_epsilon_over_time(series: dict[str, list[tuple[int, float]]], budgets: dict[str, float | None],
                           path: Path) -> None:
    """ε a site has spent after each release (composed by the audit's PLD accountant), one line per site."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for site, points in sorted(series.items()):
        if not points:
            continue
        xs, ys = zip(*points)
        line, = ax.plot((0,) + xs, (0.0,) + ys, marker="o", label=site)
        budget = budgets.get(site)
        if budget is not None and budget != float("inf"):
            ax.axhline(budget, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("release number at the site")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("ε spent (composed, PLD)")
    ax.set_title("privacy budget spent over time (dotted: site budget)")
    if any(series.values()):
        ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_canary_scores(scores: list[float], membership: list[bool], guesses_per_side: int, path: Path,
                       title: str) -> None:
    """Histogram of canary scores, included vs left out, with the thresholds above/below which the audit guessed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inside = [s for s, m in zip(scores, membership) if m]
    outside = [s for s, m in zip(scores, membership) if not m]
    ranked = sorted(scores, reverse=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    bins = 30
    ax.hist([inside, outside], bins=bins, label=["canary included", "canary left out"], alpha=0.8)
    if 0 < guesses_per_side <= len(ranked):
        ax.axvline(ranked[guesses_per_side - 1], color="k", linestyle="--", linewidth=1, label="guess 'in' above")
        ax.axvline(ranked[-guesses_per_side], color="k", linestyle=":", linewidth=1, label="guess 'out' below")
    ax.set_xlabel("score: own-label nearest synthetic image is this much nearer than any other label's")
    ax.set_ylabel("canaries")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
