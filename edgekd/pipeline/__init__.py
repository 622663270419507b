"""edgekd.pipeline: `edgekd run`, every stage from data to a reviewed edge bundle, from one validated YAML file.

* :class:`PipelineConfig` / :func:`load_pipeline_config`: the typed configuration; unknown keys and wrong
  types are errors naming the key and its line, ``--set KEY=VALUE`` overrides any key;
* :func:`plan`: the stages (teacher, no-teacher baseline, distilled student, selection, pruning, quantization
  targets, export, evaluations, benchmark, report), each a call of the library function of its command;
* :func:`run_pipeline`: runs them into one run directory, skipping a stage whose settings and inputs are
  unchanged (content hashes in ``RUN/stages/NAME.json``), resuming an interrupted training stage, and
  returning the final table (:class:`RunSummary`);
* :func:`compare_students` / :func:`diagnose` / :func:`distill_with_baseline`: is the teacher helping, and if
  not, why (agreement, teacher confidence, accuracy on augmented views, capacity gap);
* hand-off (:mod:`edgekd.pipeline._handoff`): each compression stage is timed against its parent, interleaved,
  and validated; a slower child, or one over ``handoff.max_drop``, is not carried forward (``keep: always``
  forces it), each decision is one line, and the final table marks the hand-off per deployment target.

Example:
    >>> from edgekd.report import write_report
    >>> summary = run_pipeline("examples/pneumonia.yaml", "runs/pneumonia", overrides=["seeds=3"],
    ...                        report=write_report)
    >>> summary.kd["message"]
"""

from edgekd.pipeline._baseline import distill_with_baseline
from edgekd.pipeline._config import (
    BenchSection,
    DistillSection,
    ExportSection,
    HandoffKeep,
    HandoffSection,
    KeepChoice,
    PipelineConfig,
    PruneSection,
    QuantizeSection,
    RegressionSection,
    ReportSection,
    StudentSection,
    TeacherSection,
    config_from_mapping,
    load_pipeline_config,
    parse_overrides,
)
from edgekd.pipeline._context import (
    BENCH_FILE,
    CONFIG_FILE,
    EVAL_DIR,
    KD_FILE,
    REPORT_FILE,
    SUMMARY_FILE,
    ReportFn,
    Stage,
    StageOutcome,
)
from edgekd.pipeline._diagnose import (
    DECIDING_METRIC,
    KDComparison,
    KDDiagnosis,
    SecondaryGain,
    SeedStats,
    bootstrap_gain,
    bootstrap_gains,
    compare_students,
    diagnose,
    resolve_metric,
    secondary_metrics,
    suggestions,
)
from edgekd.pipeline._evaluate import evaluate_artifact, split_logits
from edgekd.pipeline._run import Latency, RunSummary, TableRow, build_summary, prepare_run_dir, run_pipeline
from edgekd.pipeline._stages import Row, plan, rows_of
from edgekd.pipeline._state import StageRecord, artifact_hash, read_record, stage_key

__all__ = [
    "PipelineConfig",
    "TeacherSection",
    "StudentSection",
    "DistillSection",
    "PruneSection",
    "QuantizeSection",
    "ExportSection",
    "BenchSection",
    "RegressionSection",
    "ReportSection",
    "KeepChoice",
    "HandoffSection",
    "HandoffKeep",
    "load_pipeline_config",
    "config_from_mapping",
    "parse_overrides",
    "run_pipeline",
    "prepare_run_dir",
    "build_summary",
    "RunSummary",
    "TableRow",
    "Latency",
    "StageOutcome",
    "ReportFn",
    "plan",
    "rows_of",
    "Stage",
    "Row",
    "StageRecord",
    "stage_key",
    "artifact_hash",
    "read_record",
    "KDComparison",
    "KDDiagnosis",
    "SeedStats",
    "compare_students",
    "diagnose",
    "suggestions",
    "bootstrap_gain",
    "bootstrap_gains",
    "resolve_metric",
    "secondary_metrics",
    "SecondaryGain",
    "DECIDING_METRIC",
    "distill_with_baseline",
    "evaluate_artifact",
    "split_logits",
    "CONFIG_FILE",
    "SUMMARY_FILE",
    "KD_FILE",
    "BENCH_FILE",
    "EVAL_DIR",
    "REPORT_FILE",
]
