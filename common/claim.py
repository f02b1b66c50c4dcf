"""The signed privacy claim a site sends with its synthetic set: one frozen type, parsed strictly.

The engine builds a `Claim`; the site signs `claim.to_json_dict()` (with the round's run id
and nonce, `fedsynth.common.signing`); the server, pool, report and audit read its attributes. On the
wire it is strict JSON: ε = ∞ (no noise) is `null` there and `math.inf` here, converted in
this module only. `Claim.from_json` refuses anything it cannot hold exactly — oversized or
deeply nested JSON, NaN/Infinity, bools or floats where integers belong, unknown or missing
keys, out-of-range numbers, another format version — with a `ClaimError` naming the field.

`releases` is the number of composed Poisson-subsampled Gaussian releases (T·K), the
accountant's step count; the run config's and CLI's `steps` is T, the outer iterations.
`class_counts` (front-end runs) is the site's noisy class histogram, one of those releases.
`ledger_seq`/`ledger_head` name the site-ledger entry that accounts for this release (its
spend entry): the server keeps the highest sequence per site key, so a ledger rolled back
to before an accepted release is caught at the site's next upload and by `fedsynth audit`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import MISSING, dataclass, fields
from typing import Any, Mapping

from fedsynth.common.errors import FedsynthError
from fedsynth.common.front_end.base import FRONT_ENDS
from fedsynth.common.privacy.accounting import ACCOUNTANTS, Mechanism

CLAIM_FORMAT = "fedsynth-claim/2"
MAX_CLAIM_BYTES = 64 * 1024  # a real claim is about 2 KiB; checked before parsing
MAX_CLASSES = 1000
MAX_RELEASES = 10**6  # composed releases; with σ below MAX_NOISE_MULTIPLIER the RDP accountant answers in seconds
MAX_NOISE_MULTIPLIER = 100.0
MAX_MAGNITUDE = 1e6  # ε, C: anything larger is no privacy claim anyone means
MAX_TEMPERATURE = 1e3  # of a front-end set's soft labels (the engine's `temperature` setting)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SCALAR = (str, int, float, bool, type(None))


class ClaimError(FedsynthError, ValueError):
    """The claim cannot be read as a fedsynth claim; the message names the field."""


@dataclass(frozen=True, kw_only=True)
class Claim:
    """What a site asserts about one release: its mechanism, its (ε, δ), what it covers and how to reproduce it."""

    run_id: str
    epsilon: float  # math.inf when the run added no noise
    delta: float
    noise_multiplier: float
    sample_rate: float
    releases: int  # composed releases T·K (the accountant's steps)
    clip_norm: float
    accountant: str
    ipc: int
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]
    dataset: str
    sha256: str  # content hash of the images, labels and soft labels (`fedsynth.common.synthetic_set.content_hash`)
    seed: int  # the run's public seed
    release_dimension: int  # numbers in one release (the released parameters' count, d)
    class_signal: tuple[float, ...] | None = None  # per class, the clipped signal its releases carried (units of C)
    ledger_seq: int | None = None  # the site-ledger entry accounting for this release, and its hash
    ledger_head: str | None = None
    config: Mapping[str, Any] | None = None  # the engine settings of the run (flat, JSON scalars)
    versions: Mapping[str, str] | None = None
    front_end: str = "none"  # the fixed feature map the set was made for (`fedsynth.common.front_end`)
    soft_labels: bool = False  # the set carries, per image, a class distribution from the site's DP model
    # per class, the site's record count released with noise as one of the `releases` (`fedsynth.client.class_counts`)
    class_counts: tuple[float, ...] | None = None
    format: str = CLAIM_FORMAT

    def __post_init__(self) -> None:
        _check(self)

    @property
    def mechanism(self) -> Mechanism:
        return Mechanism(self.noise_multiplier, self.sample_rate, self.releases, self.clip_norm)

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)

    @property
    def temperature(self) -> float | None:
        """The temperature of the set's soft labels, from the run's config: the server multiplies it back into
        the head it recovers from them. None unless a number in (0, MAX_TEMPERATURE]."""
        value = (self.config or {}).get("temperature")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value) if 0.0 < value <= MAX_TEMPERATURE else None

    def to_json_dict(self) -> dict[str, Any]:
        """The claim as strict-JSON values (ε = ∞ → null): what is signed and written to claim.json."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        out["epsilon"] = None if math.isinf(self.epsilon) else self.epsilon
        return out

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_json_dict(), sort_keys=True, allow_nan=False, indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Claim":
        """Parse untrusted claim JSON; any problem is a ClaimError, never another exception."""
        if not isinstance(text, (str, bytes)):
            raise ClaimError("claim: must be JSON text")
        if len(text) > MAX_CLAIM_BYTES:
            raise ClaimError(f"claim: {len(text)} bytes, more than the limit of {MAX_CLAIM_BYTES}")
        try:
            if isinstance(text, bytes):
                text = text.decode("utf-8")  # strictly: json.loads would guess UTF-16/32 from the bytes
            data = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates)
        except ClaimError:
            raise
        except (ValueError, RecursionError, UnicodeDecodeError) as err:  # JSONDecodeError, huge ints, deep nesting
            raise ClaimError(f"claim: not strict JSON ({type(err).__name__})") from None
        return cls.from_json_dict(data)

    @classmethod
    def from_json_dict(cls, data: Any) -> "Claim":
        """Build a claim from parsed JSON values, checking every key and type."""
        if not isinstance(data, dict):
            raise ClaimError("claim: must be a JSON object")
        if data.get("format") != CLAIM_FORMAT:
            raise ClaimError(f"claim: format {_show(data.get('format'))}, this server reads {CLAIM_FORMAT}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k)[:40] for k in data if k not in known)
        if unknown:
            raise ClaimError(f"claim: unknown field(s) {', '.join(unknown[:5])}")
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ClaimError(f"claim: lacks {', '.join(missing)}")
        values = dict(data)
        values["epsilon"] = math.inf if data["epsilon"] is None else _number(data["epsilon"], "epsilon")
        for key in ("classes", "image_shape", "class_signal", "class_counts"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except ClaimError:
            raise
        except (TypeError, ValueError, OverflowError) as err:
            raise ClaimError(f"claim: {err}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique: with a repeated key, two parsers could read two claims."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ClaimError("claim: a key appears twice in one object")
    return out


def _refuse_constant(name: str) -> Any:
    raise ClaimError(f"claim: {name} is not a JSON number")


def _show(value: Any) -> str:
    """A hostile value as a short, inert string for a message (never formatted as a number)."""
    return repr(value)[:40]


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ClaimError(f"claim: {name} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise ClaimError(f"claim: {name} is out of range") from None
    if not math.isfinite(number):
        raise ClaimError(f"claim: {name} must be finite")
    return number


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ClaimError(f"claim: {name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ClaimError(f"claim: {name} must lie in [{low}, {high}]")
    return value


def _text(value: Any, name: str, limit: int = 256) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise ClaimError(f"claim: {name} must be a non-empty string of at most {limit} characters")
    return value


def _in_range(value: Any, name: str, low: float, high: float, *, low_open: bool = False) -> float:
    number = _number(value, name)
    if number < low or number > high or (low_open and number == low):
        raise ClaimError(f"claim: {name} must lie in {'(' if low_open else '['}{low:g}, {high:g}]")
    return number


def _check(claim: Claim) -> None:
    """Every field's type and range; types are exact so that what was signed is what is read."""
    _text(claim.format, "format")
    if claim.format != CLAIM_FORMAT:
        raise ClaimError(f"claim: format {_show(claim.format)}, expected {CLAIM_FORMAT}")
    _text(claim.run_id, "run_id", 128)
    if not (isinstance(claim.epsilon, float) and math.isinf(claim.epsilon) and claim.epsilon > 0):
        _in_range(claim.epsilon, "epsilon", 0.0, MAX_MAGNITUDE, low_open=True)
    _in_range(claim.delta, "delta", 0.0, 1.0, low_open=True)
    if claim.delta >= 1.0:
        raise ClaimError("claim: delta must lie in (0, 1)")
    _in_range(claim.noise_multiplier, "noise_multiplier", 0.0, MAX_NOISE_MULTIPLIER)
    _in_range(claim.sample_rate, "sample_rate", 0.0, 1.0, low_open=True)
    _integer(claim.releases, "releases", 1, MAX_RELEASES)
    _in_range(claim.clip_norm, "clip_norm", 0.0, MAX_MAGNITUDE, low_open=True)
    if claim.accountant not in ACCOUNTANTS:
        raise ClaimError(f"claim: accountant {_show(claim.accountant)} is not one of {', '.join(ACCOUNTANTS)}")
    _integer(claim.ipc, "ipc", 1, 10_000)
    if not isinstance(claim.classes, tuple) or not 2 <= len(claim.classes) <= MAX_CLASSES:
        raise ClaimError(f"claim: classes must list 2 to {MAX_CLASSES} class names")
    for name in claim.classes:
        _text(name, "classes[]", 128)
    if not isinstance(claim.image_shape, tuple) or len(claim.image_shape) != 3:
        raise ClaimError("claim: image_shape must be [channels, height, width]")
    _integer(claim.image_shape[0], "image_shape[0]", 1, 4)
    for side in claim.image_shape[1:]:
        _integer(side, "image_shape[1:]", 1, 4096)
    _text(claim.dataset, "dataset", 1024)
    if not isinstance(claim.sha256, str) or not _HEX64.fullmatch(claim.sha256):
        raise ClaimError("claim: sha256 must be 64 lower-case hex digits")
    _integer(claim.seed, "seed", -(2**63), 2**63 - 1)
    _integer(claim.release_dimension, "release_dimension", 1, 10**10)
    if claim.class_signal is not None:
        if not isinstance(claim.class_signal, tuple) or len(claim.class_signal) != len(claim.classes):
            raise ClaimError("claim: class_signal must give one number per class")
        for value in claim.class_signal:
            _in_range(value, "class_signal[]", 0.0, 1e12)
    if claim.class_counts is not None:
        if not isinstance(claim.class_counts, tuple) or len(claim.class_counts) != len(claim.classes):
            raise ClaimError("claim: class_counts must give one number per class")
        for value in claim.class_counts:  # noisy: may be a little below zero
            _in_range(value, "class_counts[]", -1e12, 1e12)
    if claim.front_end not in FRONT_ENDS:
        raise ClaimError(f"claim: front_end {_show(claim.front_end)} is not one of {', '.join(FRONT_ENDS)}")
    if not isinstance(claim.soft_labels, bool):
        raise ClaimError("claim: soft_labels must be true or false")
    if (claim.ledger_seq is None) != (claim.ledger_head is None):
        raise ClaimError("claim: ledger_seq and ledger_head come together")
    if claim.ledger_seq is not None:
        _integer(claim.ledger_seq, "ledger_seq", 1, 10**9)
        if not isinstance(claim.ledger_head, str) or not _HEX64.fullmatch(claim.ledger_head):
            raise ClaimError("claim: ledger_head must be 64 lower-case hex digits")
    for name, mapping, kinds in (("config", claim.config, _SCALAR), ("versions", claim.versions, (str,))):
        if mapping is None:
            continue
        if not isinstance(mapping, Mapping) or len(mapping) > 200:
            raise ClaimError(f"claim: {name} must be an object of at most 200 entries")
        for key, value in mapping.items():
            if not isinstance(key, str) or len(key) > 64 or not isinstance(value, kinds):
                raise ClaimError(f"claim: {name} must map short names to {'strings' if kinds == (str,) else 'scalars'}")
            if isinstance(value, str) and len(value) > 1024:
                raise ClaimError(f"claim: {name}[{key[:40]!r}] is too long")
            if isinstance(value, float) and not math.isfinite(value):
                raise ClaimError(f"claim: {name}[{key[:40]!r}] must be finite (JSON null for none)")
