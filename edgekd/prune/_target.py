"""What a pruning run aims for, and the per-step goals that reach it iteratively.

Three kinds of target (exactly one per run):

* ``ratio``: remove this fraction of the prunable channels (Torch-Pruning's ``pruning_ratio``);
* ``macs``: keep this fraction of the multiply-accumulates (``--target-macs 0.5`` halves the MACs);
* ``params``: keep this fraction of the parameters.

With ``steps = N`` the run prunes in ``N`` steps with recovery fine-tuning after each (iterative pruning,
Han et al. 2015; Molchanov et al. 2017): step ``k`` aims at ``1 - (1 - t) * k / N`` of the original
MACs/params (a linear schedule), or at channel ratio ``r * k / N``. A MACs/params step prunes a little at a
time and re-measures until its goal is met, so the final measure lands at the target within one small
increment.

Example:
    >>> target = PruneTarget.from_options(target_macs=0.5)
    >>> [round(g, 3) for g in target.goals(steps=2)]
    [0.75, 0.5]
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from edgekd.errors import InvalidInputError

__all__ = ["TargetKind", "PruneTarget"]


class TargetKind(str, Enum):
    RATIO = "ratio"
    MACS = "macs"
    PARAMS = "params"


class PruneTarget(BaseModel):
    """One pruning target.

    Attributes:
        kind: ``ratio`` (channels removed), ``macs`` or ``params`` (fraction kept).
        value: the fraction, in (0, 1).
    """

    model_config = ConfigDict(frozen=True)

    kind: TargetKind
    value: float = Field(gt=0, lt=1)

    @classmethod
    def from_options(
        cls, *, ratio: float | None = None, target_macs: float | None = None, target_params: float | None = None
    ) -> PruneTarget:
        """Build from the three mutually exclusive CLI options (exactly one must be given).

        Raises:
            InvalidInputError: none or several given, or a value outside (0, 1).
        """
        given = {k: v for k, v in ((TargetKind.RATIO, ratio), (TargetKind.MACS, target_macs),
                                   (TargetKind.PARAMS, target_params)) if v is not None}  # fmt: skip
        if len(given) != 1:
            raise InvalidInputError(
                "give exactly one pruning target",
                "--ratio R (channels removed), --target-macs F or --target-params F (kept)",
            )
        kind, value = next(iter(given.items()))
        if not 0.0 < float(value) < 1.0:
            raise InvalidInputError(
                f"the {kind.value} target must lie strictly between 0 and 1, got {value}",
                "e.g. --target-macs 0.5 keeps half of the MACs",
            )
        return cls(kind=kind, value=float(value))

    def goals(self, steps: int) -> list[float]:
        """Per-step goals: channel ratios to reach (``ratio``) or fractions to keep (``macs``/``params``)."""
        if steps < 1:
            raise InvalidInputError(f"--steps must be at least 1, got {steps}")
        if self.kind is TargetKind.RATIO:
            return [self.value * k / steps for k in range(1, steps + 1)]
        return [1.0 - (1.0 - self.value) * k / steps for k in range(1, steps + 1)]

    def describe(self) -> str:
        """``"macs<=0.50"``-style text for lineage notes and reports."""
        if self.kind is TargetKind.RATIO:
            return f"channel ratio {self.value:g}"
        return f"{self.kind.value} kept {self.value:g}"
