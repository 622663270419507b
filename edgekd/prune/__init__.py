"""edgekd.prune: structural pruning on Torch-Pruning's dependency graph, with recovery by distillation.

* :data:`IMPORTANCE`: one registry of channel-importance criteria (``l1``, ``l2``, ``taylor``, ``bn-scale``,
  ``lamp``, ``random``), each following Torch-Pruning's ``importance(group) -> Tensor`` contract;
* :class:`PruneTarget`: a channel ratio, or a fraction of MACs or params to keep, reached in steps;
* :class:`ChannelPruner`: DepGraph pruning (Fang et al., CVPR 2023) that keeps the classifier and named
  layers and steps towards a MACs/params target by re-measuring;
* :func:`recover`: fine-tuning through the shared training loop, distilling from a teacher or with CE;
* :func:`prune_model_dir`: the whole `edgekd prune` run, ending in an ordinary model directory whose card
  stores the pruned widths (:func:`capture_structure` / :func:`apply_structure`), so it reloads without pickle.

Example:
    >>> cfg = PruneConfig(importance="lamp", target=PruneTarget.from_options(target_macs=0.5), steps=2)
    >>> report = prune_model_dir("runs/student", "runs/student-pruned", cfg, data="pneumoniamnist")
    >>> model, card = load_model_dir("runs/student-pruned")  # the pruned architecture, no pickle
"""

from edgekd.prune._api import REPORT_FILE, PruneConfig, PruneReport, load_model_and_data, prune_model_dir
from edgekd.prune._importance import (
    IMPORTANCE,
    accumulate_gradients,
    build_importance,
    list_importance,
    needs_gradients,
)  # fmt: skip
from edgekd.prune._measure import ModelStats, model_stats, onnx_latency_ms
from edgekd.prune._pruner import ChannelPruner, find_classifier, resolve_modules
from edgekd.prune._recover import recover, recovery_objective
from edgekd.prune._structure import apply_structure, capture_structure
from edgekd.prune._target import PruneTarget, TargetKind

__all__ = [
    "apply_structure", "capture_structure",
    "IMPORTANCE", "build_importance", "list_importance", "needs_gradients", "accumulate_gradients",
    "PruneTarget", "TargetKind", "ChannelPruner", "find_classifier", "resolve_modules",
    "recover", "recovery_objective",
    "ModelStats", "model_stats", "onnx_latency_ms",
    "PruneConfig", "PruneReport", "prune_model_dir", "load_model_and_data", "REPORT_FILE",
]  # fmt: skip
