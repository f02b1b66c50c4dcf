"""Pictures people look at: a grid of synthetic images, one row per class."""

from __future__ import annotations

from pathlib import Path

import torch


def save_image_grid(images: torch.Tensor, labels: torch.Tensor, classes: list[str], path: Path, title: str = "",
                    scale: int | None = None) -> None:
    """PNG with one row per class (its name on the left) and that class's images across.

    Each row is one image strip drawn pixel for pixel (`scale`× nearest-neighbour), not one axis per
    image resampled: a 300-image pool is a few hundred KB instead of megabytes, and a greyscale set is
    saved as a one-channel PNG.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from torchvision.utils import make_grid

    channels, height, width = images.shape[1:]
    scale = scale or max(1, 64 // height)
    rows = [images[labels == c].detach().cpu().float().clamp(0, 1) for c in range(len(classes))]
    cols = max(1, max(len(r) for r in rows))
    # blank (white) places fill short rows so every strip has the same width
    strips = [make_grid(torch.cat([r, torch.ones(cols - len(r), channels, height, width)]), nrow=cols, padding=2,
                        pad_value=1.0) for r in rows]
    strip_h, strip_w = strips[0].shape[1:]
    dpi, label_inches, title_inches = 100, 1.2, 0.4 if title else 0.1
    fig_w = strip_w * scale / dpi + label_inches
    fig_h = len(classes) * strip_h * scale / dpi + title_inches
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    for c, strip in enumerate(strips):
        # axes placed exactly, so the strip is drawn at `scale` pixels per image pixel
        bottom = 1 - (title_inches + (c + 1) * strip_h * scale / dpi) / fig_h
        ax = fig.add_axes((label_inches / fig_w, bottom, strip_w * scale / dpi / fig_w, strip_h * scale / dpi / fig_h))
        if channels == 1:
            ax.imshow(strip[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(strip.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=8, parse_math=False)  # names are data
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.05 / fig_h, va="top", parse_math=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    picture = Image.open(buffer)
    picture = picture.convert("L" if channels == 1 else "RGB")
    picture.save(path, optimize=True)


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
        line, = ax.plot((0,) + xs, (0.0,) + ys, marker="o", label=site.replace("$", r"\$"))  # a name, not TeX
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
    ax.set_title(title, fontsize=9, parse_math=False)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
