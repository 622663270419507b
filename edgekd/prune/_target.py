"""What a pruning run aims for, and the per-step goals that reach it iteratively.

Four kinds of target (exactly one per run):

* ``ratio``: remove this fraction of the prunable channels (Torch-Pruning's ``pruning_ratio``);
* ``macs``: keep this fraction of the multiply-accumulates (``--target-macs 0.5`` halves the MACs);
* ``params``: keep this fraction of the parameters;
* ``latency``: a budget in milliseconds for the *measured* median latency of one batch of ``batch`` samples on
  ``backend`` (``--target-latency-ms 2.5 --batch 32``). MACs are not latency (a model pruned to 75 % of its
  MACs with odd widths ran 1.9x slower in ONNX Runtime), so this target has no fixed per-step goals: the run
  prunes, measures and repeats until the budget is met (NetAdapt, see :mod:`edgekd.prune._api`).

With ``steps = N`` the run prunes in ``N`` steps with recovery fine-tuning after each (iterative pruning,
Han et al. 2015; Molchanov et al. 2017): step ``k`` aims at ``1 - (1 - t) * k / N`` of the original
MACs/params (a linear schedule), or at channel ratio ``r * k / N``. A MACs/params step prunes a little at a
time and re-measures until its goal is met, so the final measure lands at the target within one small
increment.

Example:
    >>> target = PruneTarget.from_options(target_macs=0.5)
    >>> [round(g, 3) for g in target.goals(steps=2)]
    [0.75, 0.5]
    >>> PruneTarget.from_options(target_latency_ms=2.5, batch=32).describe()
    'p50 latency <= 2.5 ms at batch 32 (ort)'
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, model_serializer, model_validator

from edgekd._config import StageConfig
from edgekd.errors import EdgeKDError, InvalidInputError

__all__ = ["TargetKind", "LatencyBackend", "PruneTarget", "DEFAULT_LATENCY_BATCH"]

# Batch of a latency target when none is given: the batch `edgekd prune` reports latency at (--latency-batch).
DEFAULT_LATENCY_BATCH = 32


class TargetKind(str, Enum):
    RATIO = "ratio"
    MACS = "macs"
    PARAMS = "params"
    LATENCY = "latency"


class LatencyBackend(str, Enum):
    """Where a latency target is measured (more backends can be added with their latency functions)."""

    ORT = "ort"  # ONNX Runtime on the CPU (edgekd.bench.model_latency_ms)


# The keys a target may also be written with (YAML ``target: {macs: 0.5}``, the CLI's --target-macs), one per kind.
_KIND_KEYS = {"ratio": "ratio", "macs": "target_macs", "params": "target_params", "latency_ms": "target_latency_ms"}


class PruneTarget(StageConfig):
    """One pruning target.

    Written ``{kind: macs, value: 0.5}``, or with one key per kind: ``{macs: 0.5}``, ``{ratio: 0.3}``,
    ``{params: 0.6}``, ``{latency_ms: 2.5, batch: 32, backend: ort}`` (checked as :meth:`from_options`). In a config
    built by :func:`edgekd._config.build_config`, the kind given last (a flag over the file) replaces the other.

    Attributes:
        kind: ``ratio`` (channels removed), ``macs`` or ``params`` (fraction kept), or ``latency``.
        value: the fraction, in (0, 1); for ``latency`` the budget in milliseconds (> 0).
        batch: ``latency`` only: the batch size the budget is measured at.
        backend: ``latency`` only: where it is measured.
    """

    model_config = ConfigDict(frozen=True)
    input_keys: ClassVar[frozenset[str]] = frozenset(_KIND_KEYS)
    exclusive: ClassVar[tuple[frozenset[str], ...]] = (frozenset({"kind", "value", *_KIND_KEYS}),)

    kind: TargetKind
    value: float = Field(gt=0, allow_inf_nan=False)
    batch: int | None = Field(None, ge=1)
    backend: LatencyBackend | None = None

    @model_validator(mode="before")
    @classmethod
    def _latency_defaults(cls, values: Any) -> Any:
        if isinstance(values, dict) and _KIND_KEYS.keys() & values.keys():
            return cls._from_kind_keys(values)
        if isinstance(values, dict) and str(getattr(values.get("kind"), "value", values.get("kind"))) == "latency":
            given = {k: v for k, v in values.items() if v is not None}
            return {"batch": DEFAULT_LATENCY_BATCH, "backend": LatencyBackend.ORT, **given}
        return values

    @classmethod
    def _from_kind_keys(cls, values: dict[str, Any]) -> dict[str, Any]:
        if "kind" in values or "value" in values:
            raise ValueError(f"give the target as kind and value, or as one of {', '.join(_KIND_KEYS)}, not both")
        unknown = set(values) - set(_KIND_KEYS) - {"batch", "backend"}
        if unknown:
            raise ValueError(f"unknown target keys {', '.join(sorted(unknown))}")
        options = {_KIND_KEYS.get(k, k): v for k, v in values.items()}
        try:
            target = cls.from_options(**options)
        except EdgeKDError as e:  # one line: the message and its hint
            raise ValueError(e.message + (f" ({e.hint})" if e.hint else "")) from None
        return {"kind": target.kind, "value": target.value, "batch": target.batch, "backend": target.backend}

    @model_validator(mode="after")
    def _by_kind(self) -> PruneTarget:
        if self.kind is TargetKind.LATENCY:
            return self
        if self.value >= 1:
            raise ValueError(f"a {self.kind.value} target is a fraction in (0, 1), got {self.value}")
        elif self.batch is not None or self.backend is not None:
            raise ValueError("batch and backend only apply to a latency target")
        return self

    @classmethod
    def from_options(
        cls,
        *,
        ratio: float | None = None,
        target_macs: float | None = None,
        target_params: float | None = None,
        target_latency_ms: float | None = None,
        batch: int | None = None,
        backend: str | LatencyBackend | None = None,
    ) -> PruneTarget:
        """Build from the mutually exclusive CLI options (exactly one target must be given).

        Raises:
            InvalidInputError: none or several given, a fraction outside (0, 1), a budget that is not a positive
                number of milliseconds, or ``batch``/``backend`` without ``target_latency_ms``.
        """
        given = {
            k: v
            for k, v in (
                (TargetKind.RATIO, ratio),
                (TargetKind.MACS, target_macs),
                (TargetKind.PARAMS, target_params),
                (TargetKind.LATENCY, target_latency_ms),
            )
            if v is not None
        }
        if len(given) != 1:
            raise InvalidInputError(
                "give exactly one pruning target",
                "--ratio R (channels removed), --target-macs F or --target-params F (kept), or --target-latency-ms MS",
            )
        kind, value = next(iter(given.items()))
        if kind is TargetKind.LATENCY:
            return cls._latency(float(value), batch, backend)
        if batch is not None or backend is not None:
            raise InvalidInputError(
                "--batch and --backend only apply to --target-latency-ms", "drop them, or give a latency budget instead"
            )
        if not 0.0 < float(value) < 1.0:
            raise InvalidInputError(
                f"the {kind.value} target must lie strictly between 0 and 1, got {value}",
                "e.g. --target-macs 0.5 keeps half of the MACs",
            )
        return cls(kind=kind, value=float(value))

    @classmethod
    def _latency(cls, ms: float, batch: int | None, backend: str | LatencyBackend | None) -> PruneTarget:
        if not (math.isfinite(ms) and ms > 0):
            raise InvalidInputError(
                f"--target-latency-ms must be a positive number of milliseconds, got {ms:g}",
                "e.g. --target-latency-ms 2.5 --batch 32",
            )
        if batch is not None and batch < 1:
            raise InvalidInputError(f"--batch must be at least 1, got {batch}")
        names = [b.value for b in LatencyBackend]
        name = getattr(backend, "value", backend)
        if name is not None and name not in names:
            raise InvalidInputError(f"unknown latency backend {backend!r}", f"use one of {', '.join(names)}")
        return cls(kind=TargetKind.LATENCY, value=ms, batch=batch, backend=name)

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        # MACs/params/ratio targets dump as before latency targets existed (same pipeline hashes, same reports).
        return {k: v for k, v in handler(self).items() if v is not None or k not in ("batch", "backend")}

    @property
    def is_latency(self) -> bool:
        return self.kind is TargetKind.LATENCY

    def goals(self, steps: int) -> list[float]:
        """Per-step goals: channel ratios to reach (``ratio``) or fractions to keep (``macs``/``params``).

        Raises:
            InvalidInputError: ``steps < 1``, or a latency target (it is measured, not scheduled).
        """
        if steps < 1:
            raise InvalidInputError(f"--steps must be at least 1, got {steps}")
        if self.kind is TargetKind.LATENCY:
            raise InvalidInputError(
                "a latency target has no per-step goals: it prunes until the measured latency meets the budget"
            )
        if self.kind is TargetKind.RATIO:
            return [self.value * k / steps for k in range(1, steps + 1)]
        return [1.0 - (1.0 - self.value) * k / steps for k in range(1, steps + 1)]

    def describe(self) -> str:
        """``"macs<=0.50"``-style text for lineage notes and reports."""
        if self.kind is TargetKind.RATIO:
            return f"channel ratio {self.value:g}"
        if self.kind is TargetKind.LATENCY:
            return f"p50 latency <= {self.value:g} ms at batch {self.batch} ({self.backend.value})"
        return f"{self.kind.value} kept {self.value:g}"
