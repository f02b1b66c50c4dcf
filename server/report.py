"""The server's output folder: metrics, privacy report (JSON and Markdown), pooled set, global model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from fedsynth.common.errors import one_line
from fedsynth.common.plots import save_image_grid
from fedsynth.common.synthetic_set import POOL_AGGREGATION, write_json

POOL_PICTURE_PER_CLASS = 30  # a 100-site pool would make a picture of hundreds of MB


def _number(value: Any, spec: str) -> str:
    """A figure for a table cell: only real numbers are formatted; anything else is a dash."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—"
    return "∞" if value == float("inf") else format(value, spec)


def privacy_markdown(sites: list[dict[str, Any]]) -> str:
    """One row per site: ε, δ, σ, q, releases, accepted or why not; upload size and site time where known.

    Only accepted rows carry claim values; every text cell is one line with `|` escaped, so no
    reply can add or forge a row."""
    lines = ["| site | node | ε | δ | σ | q | releases | accepted | reason | upload KiB | site time s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in sites:
        accepted = s.get("accepted") is True
        claim = s if accepted else {}
        upload = s.get("upload_bytes")
        lines.append(f"| {one_line(s.get('site', '?'), 80)} | {one_line(s.get('node', ''), 40)} | "
                     f"{_number(claim.get('epsilon'), '.3g')} | {_number(claim.get('delta'), 'g')} | "
                     f"{_number(claim.get('noise_multiplier'), '.4g')} | {_number(claim.get('sample_rate'), '.4g')} | "
                     f"{_number(claim.get('releases'), 'd')} | {'yes' if accepted else 'no'} | "
                     f"{one_line(s.get('reason', ''))} | "
                     f"{_number(upload / 1024 if isinstance(upload, int) else None, '.1f')} | "
                     f"{_number(s.get('seconds'), '.0f')} |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, *, metrics: dict[str, Any], sites: list[dict[str, Any]], config: dict[str, Any],
                  versions: dict[str, str], pool_images: torch.Tensor, pool_labels: torch.Tensor,
                  classes: list[str], model: torch.nn.Module | None, pool_weights: torch.Tensor | None = None,
                  pool_soft_labels: torch.Tensor | None = None, pool_sites: torch.Tensor | None = None,
                  pool_class_counts: torch.Tensor | None = None, pool_temperatures: torch.Tensor | None = None,
                  pool_aggregation: str | None = None) -> None:
    """Everything a round leaves behind; the pool file keeps the images' training weights (if any), so the
    global model can be retrained from it exactly."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", {**metrics, "sites": sites, "config": config, "versions": versions})
    write_json(out / "privacy_report.json", {"sites": sites, "config": config, "versions": versions})
    (out / "privacy_report.md").write_text("# Privacy report\n\n" + privacy_markdown(sites))
    pool = {"images": pool_images.contiguous(), "labels": pool_labels.contiguous()}
    if pool_weights is not None:
        pool["weights"] = pool_weights.float().contiguous()
    if pool_soft_labels is not None:
        pool["soft_labels"] = pool_soft_labels.float().contiguous()
    if pool_sites is not None:  # what `fedsynth evaluate` needs to refit the round's vote or consensus
        pool["sites"], pool["class_counts"] = pool_sites.long().contiguous(), pool_class_counts.double().contiguous()
    if pool_temperatures is not None:  # the round voted: `fedsynth evaluate` votes too
        pool["temperatures"] = pool_temperatures.double().contiguous()
    # the rule that joined the sites' heads (gated or plain vote, consensus), so that `fedsynth evaluate` refits it
    metadata = None if pool_aggregation is None else {POOL_AGGREGATION: pool_aggregation}
    save_file(pool, str(out / "synthetic_pool.safetensors"), metadata=metadata)
    if len(pool_labels):
        keep = torch.cat([torch.nonzero(pool_labels == c).flatten()[:POOL_PICTURE_PER_CLASS]
                          for c in range(len(classes))])
        shown = "" if len(keep) == len(pool_labels) else f" (first {POOL_PICTURE_PER_CLASS} of each class)"
        save_image_grid(pool_images[keep], pool_labels[keep], classes, out / "synthetic_pool.png",
                        title=f"pooled synthetic set, {len(pool_labels)} images{shown}")
    if model is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(out / "global_model.safetensors"), metadata={"config": str(getattr(model, "config", {}))})
