"""ε of a claimed mechanism recomputed under a time limit, for a server that must not hang on any claim.

RDP answers in well under a second for every claim the schema admits, so it runs in process. PRV's
cost depends on (σ, q, releases) and a hostile claim can make it run for minutes, so it runs in a child
Python process that is killed at the limit. The child reads the mechanism as JSON on stdin and prints
ε as JSON: nothing is pickled in either direction.

    echo '{"mechanism": {...}, "delta": 1e-5, "accountant": "prv"}' | python -m fedsynth.common.privacy.recompute
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

from fedsynth.common.privacy.accounting import Mechanism, epsilon_of_history

IN_PROCESS = ("rdp",)  # accountants whose cost is bounded for every admissible claim


class RecomputeTimeout(Exception):
    """The accountant did not finish within the limit."""


def epsilon_within(mechanism: Mechanism, delta: float, accountant: str, seconds: float) -> float:
    """ε of `mechanism` at `delta` by `accountant`; RecomputeTimeout after `seconds` (a child process for PRV)."""
    if accountant in IN_PROCESS:
        return epsilon_of_history([mechanism], delta, accountant)
    request = json.dumps({"mechanism": mechanism.to_dict(), "delta": delta, "accountant": accountant})
    try:
        done = subprocess.run([sys.executable, "-m", __name__], input=request, capture_output=True, text=True,
                              timeout=seconds, check=False)
    except subprocess.TimeoutExpired:
        raise RecomputeTimeout(f"the {accountant} accountant did not finish within {seconds:g} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise ValueError(f"the {accountant} accountant failed: {last}")
    value = json.loads(done.stdout)["epsilon"]
    return math.inf if value is None else float(value)


def main() -> int:
    request = json.loads(sys.stdin.read())
    m = request["mechanism"]
    mechanism = Mechanism(float(m["noise_multiplier"]), float(m["sample_rate"]), int(m["steps"]),
                          float(m["clip_norm"]))
    epsilon = epsilon_of_history([mechanism], float(request["delta"]), str(request["accountant"]))
    print(json.dumps({"epsilon": None if math.isinf(epsilon) else epsilon}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
