"""The site engine's refusal."""

from fedsynth.common.errors import FedsynthError


class EngineError(FedsynthError, RuntimeError):
    """The engine refuses to run (or to resume) as asked; the message says whether anything was spent."""
