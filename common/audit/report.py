"""The audit's outputs: a terminal table, JSON, and a Markdown report with a plot of ε over time."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedsynth.common.audit.recheck import SiteAudit, as_json
from fedsynth.common.plots import save_epsilon_over_time
from fedsynth.common.synthetic_set import write_json
from fedsynth.common.versions import library_versions


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return "∞" if math.isinf(value) else f"{value:.4g}"


def release_table(audits: list[SiteAudit]) -> str:
    """Markdown table: claimed vs recomputed ε per release, per site."""
    lines = ["| site | release | σ | q | steps | δ | claimed ε | PLD ε | dp-acc RDP ε | Opacus RDP ε | Opacus PRV ε "
             "| holds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for audit in audits:
        for r in audit.releases:
            m = r.mechanism
            lines.append(f"| {audit.site} | {r.run_id[:12]} | {m['noise_multiplier']:.4g} | {m['sample_rate']:.4g} | "
                         f"{m['steps']} | {r.delta:g} | {_fmt(r.claimed_epsilon)} | {_fmt(r.recomputed['pld'])} | "
                         f"{_fmt(r.recomputed['dp_accounting_rdp'])} | {_fmt(r.recomputed['opacus_rdp'])} | "
                         f"{_fmt(r.recomputed['opacus_prv'])} | {'yes' if r.holds else '**NO**'} |")
    return "\n".join(lines) + "\n"


def site_table(audits: list[SiteAudit]) -> str:
    lines = ["| site | releases | claimed total ε | PLD total ε | budget ε | remaining ε | signatures | result |",
             "|---|---|---|---|---|---|---|---|"]
    for a in audits:
        lines.append(f"| {a.site} | {len(a.releases)} | {_fmt(a.claimed_total)} "
                     f"| {_fmt(a.recomputed_total.get('pld'))} | "
                     f"{_fmt(a.budget_epsilon)} | {_fmt(a.remaining_epsilon)} | {a.signatures} | "
                     f"{'ok' if a.ok else 'FAIL: ' + '; '.join(a.problems)} |")
    return "\n".join(lines) + "\n"


def write_report(audits: list[SiteAudit], problems: list[str], folder: Path, source: str) -> dict[str, Any]:
    """audit.json, audit.md and epsilon_over_time.png in `folder`; returns the JSON payload."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {**as_json(audits, problems), "source": source, "versions": library_versions()}
    write_json(folder / "audit.json", payload)
    series = {a.site: [(i + 1, r.site_epsilon_after) for i, r in enumerate(a.releases)
                       if r.site_epsilon_after is not None] for a in audits}
    save_epsilon_over_time(series, {a.site: a.budget_epsilon for a in audits}, folder / "epsilon_over_time.png")
    verdict = ("**every claim holds**" if payload["ok"]
               else "**FAILED**:\n\n" + "\n".join(f"- {f}" for f in payload["failures"]))
    (folder / "audit.md").write_text(
        f"# Privacy audit of `{source}`\n\nResult: {verdict}\n\n"
        "Reference: Google dp-accounting's PLD accountant, independent of the Opacus accountants that made the "
        f"claims; a claim may sit at most {100 * payload['relative_tolerance']:g} % below it.\n\n"
        f"## Sites\n\n{site_table(audits)}\n## Releases\n\n{release_table(audits)}\n"
        "![ε spent over time](epsilon_over_time.png)\n")
    return payload
