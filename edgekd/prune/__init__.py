"""edgekd.prune: structural pruning on Torch-Pruning's dependency graph, with recovery by distillation.

* :data:`IMPORTANCE`: one registry of channel-importance criteria (``l1``, ``l2``, ``taylor``, ``bn-scale``,
  ``lamp``, ``random``), each following Torch-Pruning's ``importance(group) -> Tensor`` contract;
* :class:`PruneTarget`: a channel ratio, or a fraction of MACs or params to keep, reached in steps, or a
  measured latency budget (ms at a batch) reached NetAdapt-style: prune, measure, repeat;
* :class:`ChannelPruner`: DepGraph pruning (Fang et al., CVPR 2023) that keeps the classifier and named
  layers and steps towards a MACs/params target by re-measuring;
* batch-norm statistics re-estimated on training batches after each step (:func:`recalibrate_batchnorm`), then
  recovery through :func:`edgekd.distill.finetune`, distilling from a teacher or with CE;
* :func:`prune_model_dir`: the whole `edgekd prune` run, ending in an ordinary model directory whose card
  stores the pruned widths (:func:`edgekd.students.capture_structure` / ``apply_structure``), so it reloads without pickle;
* latency is measured through a function the caller gives (:data:`LatencyFn`), and the channel multiple of
  ``round_to="auto"`` comes from a width probe it gives (:data:`WidthProbeFn`), not by importing bench.

Example:
    >>> cfg = PruneConfig(importance="lamp", target=PruneTarget.from_options(target_macs=0.5), steps=2)
    >>> report = prune_model_dir("runs/student", "runs/student-pruned", cfg, data="pneumoniamnist")
    >>> model, card = load_model_dir("runs/student-pruned")  # the pruned architecture, no pickle
"""

from edgekd.prune._api import REPORT_FILE, PruneConfig, PruneReport, parse_round_to, prune_model_dir
from edgekd.prune._importance import (
    IMPORTANCE,
    accumulate_gradients,
    build_importance,
    list_importance,
    needs_gradients,
    recalibrate_batchnorm,
)
from edgekd.prune._measure import LatencyFn, ModelStats, WidthProbeFn, model_stats
from edgekd.prune._pruner import ChannelPruner, find_classifier, resolve_modules
from edgekd.prune._target import LatencyBackend, PruneTarget, TargetKind

__all__ = [
    "IMPORTANCE",
    "build_importance",
    "list_importance",
    "needs_gradients",
    "recalibrate_batchnorm",
    "accumulate_gradients",
    "PruneTarget",
    "TargetKind",
    "LatencyBackend",
    "ChannelPruner",
    "find_classifier",
    "resolve_modules",
    "ModelStats",
    "model_stats",
    "LatencyFn",
    "WidthProbeFn",
    "PruneConfig",
    "PruneReport",
    "prune_model_dir",
    "parse_round_to",
    "REPORT_FILE",
]
