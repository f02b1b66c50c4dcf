"""The server's output folder: metrics, privacy report (JSON and Markdown), pooled set, global model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from common.plots import save_image_grid
from common.synthetic_set import write_json

POOL_PICTURE_PER_CLASS = 30  # a 100-site pool would make a picture of hundreds of MB


def privacy_markdown(sites: list[dict[str, Any]]) -> str:
    """One row per site: ε, δ, σ, q, steps, accepted or why not; upload size and site time where known."""
    fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
    kb = lambda v: None if v is None else v / 1024  # noqa: E731
    lines = ["| site | ε | δ | σ | q | steps | accepted | reason | upload KiB | site time s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in sites:
        lines.append(f"| {s['site']} | {fmt(s.get('epsilon'), '.4g')} | {fmt(s.get('delta'), 'g')} | "
                     f"{fmt(s.get('noise_multiplier'), '.4g')} | {fmt(s.get('sample_rate'), '.4g')} | "
                     f"{fmt(s.get('steps'), 'd')} | {'yes' if s['accepted'] else 'no'} | {s['reason']} | "
                     f"{fmt(kb(s.get('upload_bytes')), '.1f')} | {fmt(s.get('seconds'), '.0f')} |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, *, metrics: dict[str, Any], sites: list[dict[str, Any]], config: dict[str, Any],
                  versions: dict[str, str], pool_images: torch.Tensor, pool_labels: torch.Tensor,
                  classes: list[str], model: torch.nn.Module | None, pool_weights: torch.Tensor | None = None) -> None:
    """Everything a round leaves behind; the pool file keeps the images' training weights (if any), so the
    global model can be retrained from it exactly."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", {**metrics, "sites": sites, "config": config, "versions": versions})
    write_json(out / "privacy_report.json", {"sites": sites, "config": config, "versions": versions})
    (out / "privacy_report.md").write_text("# Privacy report\n\n" + privacy_markdown(sites))
    pool = {"images": pool_images.contiguous(), "labels": pool_labels.contiguous()}
    if pool_weights is not None:
        pool["weights"] = pool_weights.float().contiguous()
    save_file(pool, str(out / "synthetic_pool.safetensors"))
    if len(pool_labels):
        keep = torch.cat([torch.nonzero(pool_labels == c).flatten()[:POOL_PICTURE_PER_CLASS] for c in range(len(classes))])
        shown = "" if len(keep) == len(pool_labels) else f" (first {POOL_PICTURE_PER_CLASS} of each class)"
        save_image_grid(pool_images[keep], pool_labels[keep], classes, out / "synthetic_pool.png",
                        title=f"pooled synthetic set, {len(pool_labels)} images{shown}")
    if model is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(out / "global_model.safetensors"), metadata={"config": str(getattr(model, "config", {}))})
