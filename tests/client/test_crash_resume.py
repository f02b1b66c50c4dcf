"""A site killed (SIGKILL) at any write point resumes with one spend and one release, and leaves no secret behind.

Each case runs the real engine in a subprocess that kills itself right after one write (the
checkpoint before the spend, the spend, a periodic checkpoint, the finished checkpoint, the
release entry, the set), then runs the same command again to the end.
"""

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedsynth.common.ledger import Ledger
from fedsynth.common.signing import generate_signing_key, load_private_key

SCRIPT = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    import torch
    from fedsynth.client import engine
    from fedsynth.client.run_folder import RunFolder
    from fedsynth.common.data import load_mnist5k
    from fedsynth.common.ledger import Ledger
    from fedsynth.common.signing import load_private_key

    point, work = sys.argv[1], Path(sys.argv[2])
    calls = {"save": 0}

    def die_after(owner, name, when=lambda *a, **k: True):
        original = getattr(owner, name)
        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            if when(*args, **kwargs):
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        setattr(owner, name, wrapped)

    def nth_save(n):
        def when(folder, state, tensors):
            calls["save"] += 1
            return calls["save"] == n and not state.get("finished")
        return when

    if point == "checkpoint-before-spend":
        die_after(RunFolder, "save", nth_save(1))
    elif point == "spend":
        die_after(Ledger, "spend")
    elif point == "checkpoint":
        die_after(RunFolder, "save", nth_save(2))
    elif point == "finished":
        die_after(RunFolder, "save", lambda folder, state, tensors: bool(state.get("finished")))
    elif point == "release":
        die_after(Ledger, "record_release")
    elif point == "set-written":
        die_after(engine, "save_synthetic_set")
    data = load_mnist5k(train=True)
    keep = torch.cat([torch.nonzero(data.labels == c).flatten()[:30] for c in range(10)])
    config = engine.DistillConfig(front_end="none",
                                  ipc=1, iterations=3, inner_steps=2, width=8, depth=2, batch_per_class=6.0,
                                  checkpoint_every=1, replay_epochs=1, epsilon=5.0)
    ledger = Ledger.open(work / "ledger.jsonl", budget_epsilon=50.0, signer=load_private_key(work / "site.pem"))
    engine.distill(data.subset(keep), config, ledger, work / "out", device="cpu", progress=False)
''')

POINTS = ["checkpoint-before-spend", "spend", "checkpoint", "finished", "release", "set-written"]


def _run(point: str, work: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, point, str(work)], capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).resolve().parents[2])


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_any_write_point_resumes_with_one_spend_and_one_release(tmp_path, point):
    generate_signing_key(tmp_path / "site.pem", tmp_path / "site.pub")
    killed = _run(point, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    state = tmp_path / "out" / ".fedsynth-checkpoint" / "state.json"
    if point in ("finished", "release", "set-written"):  # the set is final: the secret seed is already gone
        assert "secret_seed" not in json.loads(state.read_text())
    finished = _run("none", tmp_path)
    assert finished.returncode == 0, finished.stderr[-2000:]
    ledger = Ledger.open(tmp_path / "ledger.jsonl", signer=load_private_key(tmp_path / "site.pem"))
    kinds = [e["kind"] for e in ledger.entries()]
    assert kinds == ["open", "spend", "release"]  # one spend, one release, whatever the crash
    assert (tmp_path / "out" / "synthetic.safetensors").exists()
    assert not (tmp_path / "out" / ".fedsynth-checkpoint").exists()  # nothing secret stays beside the set
    claim = json.loads((tmp_path / "out" / "claim.json").read_text())
    release = ledger.entries()[2]
    assert release["sha256"] == claim["sha256"] and claim["ledger_seq"] == 1
    assert claim["ledger_head"] == ledger.entries()[1]["hash"]
