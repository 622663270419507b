"""edgekd.search: the most accurate student under a measured latency budget on a given device.

* :class:`SearchSpace` (zoo families x width multipliers x depth choices, precisions, runtimes, pruning as a
  last step) and :class:`SearchConfig` (the one typed config of `edgekd search` and of ``budget:`` in `edgekd
  run`);
* :func:`profile_device`: the device latency table (random weights; `edgekd device profile`), and
  :func:`fit_predictor`: a latency predictor on it with its held-out MAPE;
* :func:`run_search`: latency first, then successive-halving distillation of what fits, then the winner through
  prune / quantize / export with its latency measured again (``DIR/search.json``, ``DIR/report.html``).

Example:
    >>> cfg = SearchConfig.build(None, {"teacher": "runs/teacher", "budget_ms": 0.1, "batch": 1})
    >>> result = run_search(cfg, "runs/search")
"""

from edgekd.search._config import (
    BudgetSettings,
    Engine,
    HalvingConfig,
    Percentile,
    SearchConfig,
    load_space,
    parse_duration,
)
from edgekd.search._predict import LatencyPredictor, fit_predictor, mape
from edgekd.search._report import (
    CANDIDATE_COLUMNS,
    candidate_rows,
    pareto_front,
    pareto_png,
    selection_metric,
    write_search_report,
)
from edgekd.search._result import ArrayTask, CandidateRecord, ChosenModel, SearchResult
from edgekd.search._search import SEARCH_FILE, run_search, run_search_task
from edgekd.search._space import (
    KNOBS,
    Architecture,
    Candidate,
    FamilySpace,
    Precision,
    SearchSpace,
    architectures,
    default_space,
    enumerate_candidates,
)
from edgekd.search._table import (
    DeviceTable,
    ProfileSettings,
    TableEntry,
    arch_features,
    count_layers,
    profile_device,
    read_table,
    write_table,
)
from edgekd.search._train import Training, segment_key, teacher_identity

__all__ = [
    "BudgetSettings",
    "SearchConfig",
    "Engine",
    "HalvingConfig",
    "Percentile",
    "load_space",
    "parse_duration",
    "SearchSpace",
    "FamilySpace",
    "Precision",
    "Architecture",
    "Candidate",
    "KNOBS",
    "architectures",
    "default_space",
    "enumerate_candidates",
    "DeviceTable",
    "ProfileSettings",
    "TableEntry",
    "arch_features",
    "count_layers",
    "profile_device",
    "read_table",
    "write_table",
    "LatencyPredictor",
    "fit_predictor",
    "mape",
    "Training",
    "segment_key",
    "teacher_identity",
    "run_search",
    "run_search_task",
    "ArrayTask",
    "SearchResult",
    "CandidateRecord",
    "ChosenModel",
    "SEARCH_FILE",
    "pareto_front",
    "pareto_png",
    "candidate_rows",
    "CANDIDATE_COLUMNS",
    "selection_metric",
    "write_search_report",
]
