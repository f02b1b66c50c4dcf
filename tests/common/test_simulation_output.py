"""What a quiet `fedsynth simulate` shows of the run's log: fedsynth's lines and tables, nothing of Ray's or
Flower's."""

from fedsynth.common.simulation import shown_line


def test_fedsynth_lines_are_shown_without_ray_or_flower_prefixes():
    assert (shown_line("(ClientAppActor pid=42) [fedsynth] site-0: iteration 5/20\n")
            == "[fedsynth] site-0: iteration 5/20")
    assert shown_line("\x1b[92mINFO \x1b[0m: [fedsynth] asked 2 site(s)\n") == "[fedsynth] asked 2 site(s)"
    assert shown_line("| site | node | ε |\n") == "| site | node | ε |"


def test_library_noise_is_hidden():
    for line in ("12/01/2026 10:13:05:DEBUG:Initialising: RayBackend\n",
                 "/x/ray/_private/worker.py:2051: FutureWarning: Tip: ...\n", "  warnings.warn(\n",
                 "\x1b[93mWARNING \x1b[0m:   Since flwr 1.32, default simulated SuperNodes changed\n"):
        assert shown_line(line) is None
