"""How far one distillation step is from the hardware floor: FLOPs per outer iteration and achieved FLOP/s.

For an engine profile of bench/distill.py, counts the floating-point operations of outer
iterations with PyTorch's FlopCounterMode (per-example gradients, clipping, noise, the
synthetic double-backward, the inner network steps), then times `--iterations` of them on
the device. Achieved TFLOP/s beside the device's peak shows the gap to the floor. Rows go
to bench/results/flops.json (one per profile and device).

    .venv/bin/python bench/flops.py --profile cpu                # at ε = 10, the profile's ε = 10 settings
    .venv/bin/python bench/flops.py --profile cpu --epsilon 1
    .venv/bin/python bench/flops.py --profile paper --device cuda --iterations 20
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.distill import PROFILES, distill_settings  # noqa: E402
from bench.results_io import merge_rows  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# Dense FP32 peak (no tensor cores) of devices we may be lent, TFLOP/s, from the vendors' data sheets.
PEAK_FP32_TFLOPS = {"H100": 67.0, "H200": 67.0, "A100": 19.5}


def _distill(config, device: str) -> float:
    """Seconds of one engine run (its own fresh ledger); the FLOPs are counted by the caller's context."""
    from fedsynth.client.engine import distill
    from fedsynth.common.data import load_fashion_mnist
    from fedsynth.common.ledger import Ledger

    data = load_fashion_mnist(train=True)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger.open(Path(tmp) / "ledger.jsonl", budget_epsilon=math.inf)
        started = time.time()
        distill(data, config, ledger, Path(tmp) / "set", device=device, progress=False)
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        return time.time() - started


def measure(profile: str, device: str, iterations: int, epsilon: float = 10.0) -> dict:
    """FLOPs and seconds of one outer iteration at the settings the engine bench uses for `profile` at ε."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fedsynth.client.engine import DistillConfig
    from fedsynth.common.runtime import resolve_device
    from fedsynth.common.versions import library_versions

    settings = distill_settings(profile, epsilon)
    dev = str(resolve_device(device))
    counted = DistillConfig(ipc=10, epsilon=epsilon, seed=0, **{**settings, "iterations": 1})
    with FlopCounterMode(display=False) as counter:
        _distill(counted, dev)
    flops = counter.get_total_flops()
    # time: a 1-iteration run (set-up) and an `iterations` run; the difference is the steady per-iteration cost
    setup = _distill(counted, dev)
    timed = DistillConfig(ipc=10, epsilon=epsilon, seed=0, **{**settings, "iterations": 1 + iterations})
    per_iteration = max(1e-9, (_distill(timed, dev) - setup) / iterations)
    name = torch.cuda.get_device_name(dev) if dev.startswith("cuda") else "cpu"
    peak = next((v for k, v in PEAK_FP32_TFLOPS.items() if k in name), None)
    achieved = flops / per_iteration / 1e12
    return {"profile": profile, "epsilon": epsilon, "device": name, "flops_per_iteration": flops,
            "flops_per_release": flops / settings["inner_steps"], "seconds_per_iteration": per_iteration,
            "iterations_per_second": 1.0 / per_iteration, "achieved_tflops": achieved,
            "peak_fp32_tflops": peak, "fraction_of_peak": None if peak is None else achieved / peak,
            "settings": settings, "timed_iterations": iterations, "versions": library_versions()}


def table(rows: list[dict]) -> str:
    lines = ["| profile | ε | device | GFLOP per outer iteration | it/s | achieved TFLOP/s | of FP32 peak |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        share = "—" if r["fraction_of_peak"] is None else f"{100 * r['fraction_of_peak']:.1f} %"
        lines.append(f"| {r['profile']} | {r['epsilon']:g} | {r['device']} | {r['flops_per_iteration'] / 1e9:.1f} | "
                     f"{r['iterations_per_second']:.2f} | {r['achieved_tflops']:.3f} | {share} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epsilon", type=float, default=10.0,
                        help="the ε whose profile settings to count (per-ε overrides apply)")
    parser.add_argument("--iterations", type=int, default=3, help="outer iterations timed after the set-up")
    parser.add_argument("--out", type=Path, default=RESULTS / "flops.json")
    args = parser.parse_args()
    row = measure(args.profile, args.device, args.iterations, args.epsilon)
    rows = merge_rows(args.out, "flops", [row], lambda r: (r["profile"], r["epsilon"], r["device"]))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
