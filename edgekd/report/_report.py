"""`edgekd report RUN_DIR`: the page a team shows clinicians and reviewers, from a finished `edgekd run`.

It reads the run directory's ``summary.json`` (the final table, written by :func:`edgekd.pipeline.run_pipeline`;
its rows name every evaluation, training history and artifact), ``bench.json``, ``stages/*.json`` and the
model directories, and writes ``RUN/report/index.html`` (figures embedded) with the figures also as PNG files
in ``RUN/report/figures/`` and the Grad-CAM scores in ``RUN/report/gradcam.json``. Sections:

* **summary**: the final table (the hand-off per deployment target marked, ACC, AUROC, sensitivity/specificity
  at the operating point, ECE, params, MACs, size, p50/p90 latency per batch, speedup against the teacher), the
  KD verdict, and each hand-off decision: its line, and the interleaved latencies and validation metric of child
  and parent that decided it (``summary.json["handoff"]``);
* **search** (a run with ``budget:``): the latency-budget search that chose the student: the accuracy against
  measured latency of every trained candidate with its Pareto front and the budget line, the chosen model at its
  latency measured again on its bundle, the hand-configured alternatives, the predictor's held-out error and
  every candidate with its latency (measured or predicted) and how far it trained;
* **kd**: is the teacher helping: distilled against no-teacher student on val and test (spread over seeds),
  the verdict, the evidence and suggestions, a grid of augmented training views;
* **pareto**: test AUROC against latency per batch size, the teacher as reference;
* **size**: params, MACs and file size; **roc**: ROC curves and confusion matrices;
* **calibration**: ECE, reliability diagrams, the operating-point table (threshold for the target sensitivity
  on validation, the specificity it gives on test);
* **curves**: training curves of every stage that trained;
* **gradcam**: teacher and each PyTorch stage side by side on the same test images (misclassified ones
  included), per-image and mean agreement with the teacher (:func:`~edgekd.report.cam_agreement`);
* **environment** and **lineage**: versions, machine, and every artifact's hash and stage key.

Example:
    >>> write_report("runs/pneumonia")
    PosixPath('runs/pneumonia/report/index.html')
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekd._io import MARKER_FILE, atomic_dir, check_output
from edgekd.data import Augment, AugmentedDataset, DataBundle, load_data
from edgekd.errors import ArtifactError
from edgekd.modeldir import load_model_dir
from edgekd.report import _figures as figs
from edgekd.report._gradcam import CAM_METHOD, TOP_FRACTION, cam_agreement, fmt_score, gradcam_maps
from edgekd.report._html import Page, esc, figure, fmt, paragraph, section_ids, table
from edgekd.report._seg import segmentation_sections
from edgekd.search import CANDIDATE_COLUMNS, SearchResult, candidate_rows, pareto_png, selection_metric
from edgekd.specs import package_versions

__all__ = ["write_report", "read_summary", "REPORT_DIR", "SUMMARY_FILE"]

REPORT_DIR = "report"
SUMMARY_FILE = "summary.json"


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``RUN/summary.json`` of a finished `edgekd run`.

    Raises:
        ArtifactError: not a run directory, or a run that has not reached its final table (exit 4).
    """
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise ArtifactError(
            f"{run_dir} has no {SUMMARY_FILE}: not a finished `edgekd run` directory",
            "run `edgekd run PIPELINE.yaml --out RUN_DIR` first (it resumes an interrupted run)",
        )
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ArtifactError(f"{path} is not readable JSON: {e}", "re-run `edgekd run` to rewrite it") from None


class _Run:
    """Lazy access to the files of one run directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.summary = read_summary(root)
        self.rows = self.summary["rows"]
        self._data: DataBundle | None = None

    @property
    def data(self) -> DataBundle:
        if self._data is None:
            self._data = load_data(self.summary["data"])
        return self._data

    def json(self, rel: str) -> dict[str, Any]:
        return json.loads((self.root / rel).read_text())

    def arrays(self, rel: str) -> dict[str, np.ndarray]:
        with np.load(self.root / Path(rel).with_suffix(".npz")) as z:
            return {k: z[k] for k in z.files}

    def path(self, rel: str) -> Path:
        return Path(rel) if Path(rel).is_absolute() else self.root / rel

    def bench(self) -> dict[str, Any] | None:
        rel = self.summary.get("bench")
        return self.json(rel) if rel and (self.root / rel).is_file() else None


def _pm(row: dict[str, Any], split: str, key: str) -> str:
    v = row[split].get(key)
    s = row.get("spread", {}).get(f"{split}.{key}")
    return fmt(v) + (f" ± {s:.4f}" if s else "")


def _op(row: dict[str, Any], key: str) -> Any:
    return row.get("operating_point", {}).get(key)


_METRIC_LABELS = {
    "acc": "ACC",
    "auroc": "AUROC",
    "balanced_acc": "balanced ACC",
    "f1_macro": "macro F1",
    "dice": "Dice",
    "iou": "IoU",
    "hd95": "HD95 (px)",
}


def deciding_metric(run: _Run) -> str:
    """The metric the KD verdict decided on (``kd.json``), which the summary and the Pareto view show first; without
    a KD comparison, AUROC when the rows have it, else accuracy."""
    metric = (run.summary.get("kd") or {}).get("metric")
    if metric and any(isinstance(r["test"].get(metric), (int, float)) for r in run.rows):
        return metric
    return "auroc" if any(not math.isnan(r["test"].get("auroc", math.nan)) for r in run.rows) else "acc"


def _summary_section(run: _Run, page: Page, pngs: dict[str, bytes]) -> None:
    s = run.summary
    metric = deciding_metric(run)
    seg = s["task"] == "segmentation"  # masks: Dice, IoU, HD95, pixel accuracy; no operating point nor ECE
    metrics = [metric] + [m for m in (("dice", "iou", "hd95", "acc") if seg else ("acc", "auroc")) if m != metric]
    batches = sorted({int(b) for r in run.rows for b in r.get("latency", {})})
    classif = [] if seg else ["sens@op", "spec@op", "ECE"]
    head = [
        "stage",
        "hand-off",
        f"{_METRIC_LABELS.get(metric, metric)} (decides)",
        *[_METRIC_LABELS.get(m, m) for m in metrics[1:]],
        *classif,
        "params",
        "MACs",
        "size MB",
    ]
    head += [f"p50/p90 ms b{b}" for b in batches] + [f"speedup b{b}" for b in batches]
    body = []
    for r in run.rows:
        lat = r.get("latency", {})
        cells = [
            r["label"],
            ", ".join(r.get("handoff", [])) or "",
            *[_pm(r, "test", m) for m in metrics],
            *([] if seg else [_op(r, "sensitivity"), _op(r, "specificity"), r["test"].get("ece")]),
            r.get("params"),
            r.get("macs"),
            (r.get("size_bytes") or math.nan) / 1e6,
        ]
        cells += [_latency_cell(lat[str(b)]) if str(b) in lat else "n/a" for b in batches]
        cells += [f"{lat[str(b)]['speedup']:.1f}x" if lat.get(str(b), {}).get("speedup") else "n/a" for b in batches]
        body.append(cells)
    seeds = f"; figures are means ± standard deviations over {s['seeds']} seeds" if s["seeds"] > 1 else ""
    note = (
        f"Test split of <code>{esc(s['data'])}</code>; the KD verdict and the Pareto view use "
        f"<code>{esc(metric)}</code> (<code>distill.metric</code>). "
        + (
            "Masks are scored at the label masks' size (Dice, IoU of the foreground classes; HD95 in pixels)"
            if seg
            else f"The operating point is the threshold that reaches sensitivity {s['target_sensitivity']:.2f} on "
            "validation, applied to test"
        )
        + f"{seeds}. Latency: the benchmark "
        f"of the seed-0 artifacts (<code>{esc(s.get('bench') or 'not run')}</code>); speedup is the teacher's p50 over "
        "the stage's at the same batch size (each its fastest runtime when several ran)."
    )
    kd = s.get("kd", {})
    verdict = (
        f'<div class="verdict {"good" if kd.get("helps") else "bad"}">{esc(kd.get("message", ""))}</div>' if kd else ""
    )
    page.section(
        "summary",
        "Summary",
        verdict,
        table(head, body),
        paragraph(note, "muted"),
        *_runtime_parts(run.rows, batches),
        *_handoff_parts(s),
    )


def _latency_cell(lat: dict[str, Any]) -> str:
    """``p50 / p90``, and the fastest runtime's name when several runtimes were measured."""
    runtime = f" ({lat['backend']})" if len(lat.get("runtimes") or {}) > 1 else ""
    return f"{lat['p50_ms']:.2f} / {lat['p90_ms']:.2f}{runtime}"


def _runtime_parts(rows: list[dict[str, Any]], batches: list[int]) -> list[str]:
    """Per stage and batch, every runtime's p50 side by side, the fastest marked (when more than one ran)."""
    names = [
        b
        for b in ("ort", "openvino", "executorch", "trt", "torch")
        if any(b in (lat.get("runtimes") or {}) for r in rows for lat in r.get("latency", {}).values())
    ]
    if len(names) < 2:
        return []
    body = []
    for r in rows:
        for b in batches:
            lat = r.get("latency", {}).get(str(b))
            if not lat:
                continue
            got = lat.get("runtimes") or {}
            cells = [
                f"<b>{got[n]:.4f} *</b>" if n == lat["backend"] else (f"{got[n]:.4f}" if n in got else "-")
                for n in names
            ]
            body.append([r["label"], b, lat["device"], *cells, lat["backend"]])
    note = (
        "p50 ms of one batch per runtime in the same benchmark run and threads (<code>bench.backends</code>), "
        "* the fastest, which the summary's latency, speedup and the hand-off decisions use: a compressed model is "
        "carried forward only when its fastest runtime beats its parent's fastest at every batch."
    )
    return [table(["stage", "batch", "device", *names, "fastest"], body), paragraph(note, "muted")]


def _handoff_parts(s: dict[str, Any]) -> list[str]:
    """Each hand-off decision as its line and the measurements behind it; the final benchmark's re-check."""
    h = s.get("handoff") or {}
    decisions = h.get("decisions", [])
    if not decisions:
        return []
    parts = [f'<div class="verdict {"good" if d["kept"] else "bad"}">{esc(d["line"])}</div>' for d in decisions]
    parts += [f'<div class="verdict bad">{esc(line)}</div>' for line in h.get("recheck", [])]
    rows = []
    for d in decisions:
        val = f"{fmt(d.get('child_val'))} vs {fmt(d.get('parent_val'))}"
        for p in d.get("latency") or [None]:
            lat = (
                [
                    f"{p['backend']}/{p['device']}",
                    p["batch"],
                    f"{p['child_p50_ms']:.4g} vs {p['parent_p50_ms']:.4g}",
                    f"{p['ratio']:.2f}x",
                ]
                if p
                else ["not measured", "", d.get("unmeasured") or "", ""]
            )
            rows.append(
                [d["stage"], d["parent"], *lat, f"{d['metric']} {val}", d["keep"], "yes" if d["kept"] else "no"]
            )
    targets = [[t["target"], t["device"], t["note"]] for t in h.get("targets", [])]
    parts += [
        table(
            [
                "child",
                "parent",
                "backend/device",
                "batch",
                "p50 ms child vs parent",
                "child / parent",
                "val metric child vs parent",
                "keep",
                "carried forward",
            ],
            rows,
        ),
        paragraph(
            "Each compression stage is timed against its parent in the same run, interleaved (the two "
            "alternate over short rounds; the median of the per-round p50s), on the run's benchmark "
            "backends, devices and batches. A child is carried forward when it is faster at every batch "
            "and its validation metric is within the budget (<code>handoff.max_drop</code> points), or "
            "when its stage says <code>keep: always</code>.",
            "muted",
        ),
        table(["deployment target", "device", "hand-off"], targets),
    ]
    return parts


def _search_section(run: _Run, page: Page, pngs: dict[str, bytes]) -> None:
    """The latency-budget search that chose the student (``summary.json["search"]``)."""
    path = run.path(run.summary["search"])
    try:
        result = SearchResult.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ArtifactError(
            f"{path} is not a readable search result: {str(e).splitlines()[0]}", "re-run `edgekd run`"
        ) from None
    metric = selection_metric(result)
    pngs["search"] = pareto_png(result, metric)
    c, pred = result.chosen, result.predictor
    head = (
        f"Budget {result.budget_ms:.4g} ms ({result.percentile} of one batch of {result.batch}); "
        f"{len(result.candidates)} candidates, {sum(r.fits for r in result.candidates)} within the budget "
        f"(the others never trained), {len(result.trainings)} trainings over {result.rungs_reached} rung(s) of "
        f"successive halving in {result.wall_s:.0f} s"
        + (" (time limit reached)" if result.time_limit_reached else "")
        + "."
    )
    verdict = (
        f'<div class="verdict {"good" if c.meets_budget else "bad"}">Chosen: {esc(c.label)}, measured again on '
        f"its bundle at {c.measured_ms:.4g} ms ({'meets' if c.meets_budget else 'misses'} the budget); "
        f"val {esc(metric)} {fmt(c.val.get(metric))}, test {esc(metric)} {fmt(c.test.get(metric))}"
        + (
            f"; pruned to the budget as a last step (MACs kept {c.pruned.get('macs_kept', math.nan):.3f})"
            if c.pruned
            else ""
        )
        + ".</div>"
        if c is not None
        else '<div class="verdict bad">No model was chosen (nothing trained within the time limit).</div>'
    )
    alts = [
        [
            r.label,
            fmt(r.latency_ms),
            r.latency_source,
            r.trained_epochs,
            fmt(r.val.get(metric)),
            fmt(r.test.get(metric)),
        ]
        for r in result.candidates
        if r.candidate.arch.key in result.alternatives and r.deployed and r.fits
    ]
    err = (
        f"{pred.holdout_mape:.1f} % mean absolute percentage error on {pred.n_holdout} held-out measured candidates"
        if pred.holdout_mape is not None
        else "not estimated (too few measured candidates)"
    )
    rows = candidate_rows(result, metric)
    page.section(
        "search",
        "Latency-budget search",
        verdict,
        paragraph(head),
        figure(
            pngs["search"],
            f"Validation {metric} against the latency of every trained candidate (the table's, measured with random "
            "weights, or predicted), the Pareto front, the budget line, the hand-configured alternatives (each "
            "family's zoo model as it is) and the chosen model at its latency measured again.",
        ),
        paragraph(f"Latency predictor (fitted on the device table): {err}."),
        table(["hand-configured alternative", "ms", "latency", "epochs", f"val {metric}", f"test {metric}"], alts)
        if alts
        else paragraph("No hand-configured alternative fits the budget."),
        table([h.format(metric=metric) for h in CANDIDATE_COLUMNS], [cells for cells, _ in rows]),
        paragraph(
            f"Every candidate by latency; the chosen one is {esc(c.label) if c else 'none'}. Full record: "
            f"<code>{esc(run.summary['search'])}</code>.",
            "muted",
        ),
    )


def _augment_grid(run: _Run, n: int) -> bytes | None:
    aug = run.summary.get("augment", {})
    preset = Augment.preset(aug.get("preset", "none"))
    ds = run.data.train
    idx = np.linspace(0, len(ds) - 1, max(1, n // 2)).round().astype(int)
    wrapped = AugmentedDataset(ds, preset, seed=int(aug.get("seed", 0)))
    images, titles = [], []
    for i in idx:
        img, y = ds[int(i)]
        label = run.summary["label_names"][int(y)] if np.ndim(y.numpy()) == 0 else ""
        images += [img.numpy(), wrapped.apply(img, wrapped.params(int(i), 0)).numpy()]
        titles += [f"#{i} {label}", f"#{i} view 0 ({aug.get('preset')})"]
    return figs.image_grid_png(images, titles)


def _kd_section(run: _Run, page: Page, pngs: dict[str, bytes]) -> None:
    kd = run.summary.get("kd") or {}
    if not kd:
        page.section("kd", "Is the teacher helping?", paragraph("No distillation comparison was recorded."))
        return
    metric = kd["metric"]

    def cell(stats: dict[str, Any] | None, key: str) -> str:
        if not stats:
            return "n/a"
        v = [x for x in stats[key] if x is not None]
        return f"{np.mean(v):.4f}" + (f" ± {np.std(v, ddof=1):.4f}" if len(v) > 1 else "") if v else "n/a"

    rows = [
        [
            name,
            cell(kd.get(key), "val"),
            cell(kd.get(key), "test"),
            cell(kd.get(key), "val_acc"),
            cell(kd.get(key), "test_acc"),
        ]
        for name, key in (("distilled", "distilled"), ("no teacher", "baseline"))
    ]
    if kd.get("gain_val") is not None:
        pm = (lambda k: f" ± {kd[k]:.4f}") if kd.get("seeds", 1) > 1 else (lambda k: "")  # noqa: E731
        rows.append(
            [
                "KD gain",
                f"{kd['gain_val']:+.4f}{pm('gain_val_std')}",
                f"{kd['gain_test']:+.4f}{pm('gain_test_std')}",
                f"{kd['gain_val_acc']:+.4f}",
                f"{kd['gain_test_acc']:+.4f}",
            ]
        )
    parts = [
        f'<div class="verdict {"good" if kd.get("helps") else "bad"}">{esc(kd.get("message", ""))}</div>',
        table(["student", f"val {metric}", f"test {metric}", "val ACC", "test ACC"], rows),
    ]
    if kd.get("secondary"):
        ci = kd.get("gain_val_ci")
        srows = [
            [
                f"{metric} (decides)",
                f"{kd['gain_val']:+.4f}",
                f"{kd['gain_test']:+.4f}",
                f"{ci[0]:+.4f} to {ci[1]:+.4f}" if ci else "n/a",
                "",
            ]
        ]
        for m, g in kd["secondary"].items():
            sci = g.get("ci")
            srows.append(
                [
                    m,
                    fmt(g.get("val")),
                    fmt(g.get("test")),
                    f"{sci[0]:+.4f} to {sci[1]:+.4f}" if sci else "n/a",
                    "yes: disagrees beyond its noise" if m in kd.get("disagree", []) else "no",
                ]
            )
        parts += [
            table(
                [
                    "metric",
                    "KD gain val",
                    "KD gain test",
                    "95% CI (val, paired bootstrap)",
                    "against the deciding metric",
                ],
                srows,
            ),
            paragraph(
                "A gain on the deciding metric is called a gain only when no other metric moves the other "
                "way beyond the noise of the validation set.",
                "muted",
            ),
        ]
    if kd.get("suggestions"):
        parts.append(
            "<p><b>What to try</b> (from the evidence below):</p><ul>"
            + "".join(f"<li>{esc(t)}</li>" for t in kd["suggestions"])
            + "</ul>"
        )
    d = kd.get("diagnosis")
    if d:
        ev = [
            ["teacher accuracy, clean training images", d["teacher_acc_train"]],
            [f"teacher accuracy, augmented views ({d['augment']})", d.get("teacher_acc_augmented")],
            ["teacher mean confidence on its training images", d["teacher_confidence_train"]],
            ["fraction of training images with teacher confidence >= 0.99", d["teacher_confident_fraction"]],
            ["teacher / student parameters", d.get("params_ratio")],
        ]
        ev += [
            [f"{name}: top-1 agreement with the teacher (train / val)", f"{a['train']:.4f} / {a['val']:.4f}"]
            for name, a in d.get("agreement", {}).items()
        ]
        ev += [
            [f"student's last-epoch training loss: {'total' if k == 'loss' else k}", v]
            for k, v in d.get("final_losses", {}).items()
        ]
        parts += [f"<p><b>Evidence</b> ({d['samples']} training and validation images):</p>", table(["", "value"], ev)]
    preset = run.summary.get("augment", {}).get("preset", "none")
    png = None
    if Augment.preset(preset).is_identity:
        parts.append(
            paragraph(
                "The student trained without augmentation: the teacher's soft labels were computed on "
                "the training images as they are."
            )
        )
    else:
        png = _augment_grid(run, int(run.summary.get("report_settings", {}).get("augment_samples", 16)))
    if png:
        pngs["augment"] = png
        parts.append(
            figure(
                png,
                "Training images and the augmented view the student (and the teacher's soft labels) "
                "saw in epoch 0. An augmentation that changes what an image shows makes the teacher's soft "
                "labels wrong while the hard labels stay right.",
            )
        )
    page.section("kd", "Is the teacher helping?", *parts)


def _pareto_section(run: _Run, page: Page, pngs: dict[str, bytes]) -> None:
    metric = deciding_metric(run)
    pts = [
        {
            "label": r["label"],
            metric: r["test"].get(metric),
            f"{metric}_std": r.get("spread", {}).get(f"test.{metric}"),
            "latency": {b: lat["p50_ms"] for b, lat in r.get("latency", {}).items()},
        }
        for r in run.rows
    ]
    pngs["pareto"] = figs.pareto_png(pts, metric=metric)
    page.section(
        "pareto",
        "Accuracy against latency (Pareto view)",
        figure(
            pngs["pareto"],
            f"Test {metric.upper()} against the p50 latency of one batch, per batch size; the "
            "dashed line is the teacher's accuracy (the shaded band: within 0.01 of it), the dotted line its "
            "latency. Error bars: spread over seeds.",
        ),
    )


def _size_section(run: _Run, page: Page, pngs: dict[str, bytes]) -> None:
    pngs["size"] = figs.size_png(run.rows)
    page.section(
        "size",
        "Parameters, MACs and size",
        figure(
            pngs["size"],
            "Parameters, multiply-accumulates per sample at the model's input size, and the "
            "size of the weights file (model directory) or of the ONNX file (INT8 / FP16).",
        ),
    )


def _roc_section(run: _Run, page: Page, pngs: dict[str, bytes]) -> None:
    curves, mats = [], []
    for r in run.rows:
        a = run.arrays(r["eval"][0])
        curves.append(
            {
                "label": r["label"],
                "logits": a["test_logits"],
                "targets": a["test_targets"],
                "auroc": r["test"].get("auroc", math.nan),
            }
        )
        cm = run.json(r["eval"][0])["test"].get("confusion_matrix")
        if cm:
            mats.append({"label": r["label"], "matrix": cm})
    parts = []
    if run.summary["task"] != "multilabel":
        pngs["roc"] = figs.roc_png(curves)
        parts.append(
            figure(pngs["roc"], "ROC curves on the test split (seed 0); multi-class: micro-average one-vs-rest.")
        )
    if mats:
        pngs["confusion"] = figs.confusion_png(mats, run.summary["label_names"])
        parts.append(figure(pngs["confusion"], "Confusion matrices on test at the argmax decision (rows: true class)."))
    page.section("roc", "ROC curves and confusion matrices", *parts)


def _calibration_section(run: _Run, page: Page, pngs: dict[str, bytes]) -> None:
    diagrams, ops = [], []
    for r in run.rows:
        ev = run.json(r["eval"][0])
        if "reliability" in ev:
            diagrams.append(
                {"label": r["label"], "ece": ev["test"].get("ece", math.nan), "bins": ev["reliability"]["test"]}
            )
        op = ev.get("operating_point")
        if op:
            ops.append(
                [
                    r["label"],
                    op["threshold"],
                    op["val"]["sensitivity"],
                    op["val"]["specificity"],
                    op["test"]["sensitivity"],
                    op["test"]["specificity"],
                    ev["test"].get("ece"),
                ]
            )
    parts = []
    if diagrams:
        pngs["reliability"] = figs.reliability_png(diagrams)
        parts.append(
            figure(
                pngs["reliability"],
                "Reliability diagrams on test: accuracy per confidence bin (15 bins); "
                "red: the gap to the diagonal. ECE = sum over bins of (share of samples) x |accuracy - "
                "confidence|.",
            )
        )
    if ops:
        t = run.summary["target_sensitivity"]
        parts += [
            f"<p><b>Operating point</b>: the threshold on P({esc(run.summary['label_names'][-1])}) that reaches "
            f"sensitivity {t:.2f} on validation, and what the same threshold gives on test.</p>",
            table(
                [
                    "stage",
                    "threshold",
                    "val sensitivity",
                    "val specificity",
                    "test sensitivity",
                    "test specificity",
                    "test ECE",
                ],
                ops,
            ),
        ]
    page.section("calibration", "Calibration and operating point", *parts)


def _curves_section(run: _Run, page: Page, pngs: dict[str, bytes]) -> None:
    deciding = deciding_metric(run)  # a segmenter's history holds val_dice, a classifier's val_auroc
    stages = []
    for r in run.rows:
        hists = [
            [json.loads(line) for line in run.path(h).read_text().splitlines() if line.strip()]
            for h in r.get("history", [])
            if run.path(h).is_file()
        ]
        if hists:
            metric = next(
                (m for m in (f"val_{deciding}", "val_auroc", "val_acc") if any(m in h for h in hists[0])), "val_acc"
            )
            label = _METRIC_LABELS.get(metric[4:], metric[4:])
            stages.append({"label": r["label"], "histories": hists, "metric": metric, "metric_label": label})
    if not stages:
        page.section("curves", "Training curves", paragraph("No stage of this run trained."))
        return
    pngs["curves"] = figs.curves_png(stages)
    names = sorted({s["metric_label"] for s in stages})
    page.section(
        "curves",
        "Training curves",
        figure(
            pngs["curves"],
            f"Training loss and validation {' / '.join(names)} per epoch of every stage that trained (thin "
            "lines: other seeds). Pruning recovery epochs follow one another across pruning steps.",
        ),
    )


def _pick_images(
    run: _Run, rows: list[dict[str, Any]], n: int, n_wrong: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Test images for Grad-CAM: up to ``n_wrong`` misclassified by some model, the rest classified right by all."""
    preds = {}
    y = None
    for r in rows:
        a = run.arrays(r["eval"][0])
        preds[r["name"]], y = a["test_logits"].argmax(1), a["test_targets"].reshape(len(a["test_targets"]), -1)[:, 0]
    wrong_any = np.zeros(len(y), bool)
    for p in preds.values():
        wrong_any |= p != y
    wrong, right = np.flatnonzero(wrong_any), np.flatnonzero(~wrong_any)

    def spread(idx: np.ndarray, k: int) -> np.ndarray:
        return idx[np.linspace(0, len(idx) - 1, k).round().astype(int)] if k and len(idx) else idx[:0]

    k_wrong = min(n_wrong, len(wrong))
    chosen = np.concatenate([spread(wrong, k_wrong), spread(right, min(n - k_wrong, len(right)))])
    return np.sort(chosen).astype(int), preds


def _gradcam_section(run: _Run, page: Page, pngs: dict[str, bytes], out: Path) -> dict[str, Any]:
    rows = [r for r in run.rows if r.get("kind") == "model_dir"]
    if not rows or rows[0]["name"] != "teacher" or run.summary["task"] == "multilabel":
        why = (
            "the teacher is not a PyTorch model directory" if rows and rows[0]["name"] != "teacher" else "not available"
        )
        page.section("gradcam", "Grad-CAM agreement with the teacher", paragraph(f"Grad-CAM maps: {why}."))
        return {}
    settings = run.summary.get("report_settings", {})
    idx, preds = _pick_images(
        run, rows, int(settings.get("gradcam_images", 12)), int(settings.get("gradcam_misclassified", 4))
    )
    test = run.data.test
    images = torch.stack([test[int(i)][0] for i in idx])
    labels = [int(test[int(i)][1]) for i in idx]
    names = run.summary["label_names"]
    cams = {}
    for r in rows:
        model, card = load_model_dir(run.path(r["artifact"]))
        cams[r["name"]] = gradcam_maps(model, card.preprocess, images, classes=labels, size=run.data.image_size)
    ref = cams["teacher"]
    scores: dict[str, list[dict[str, float]]] = {
        r["name"]: [cam_agreement(ref.maps[j], cams[r["name"]].maps[j]) for j in range(len(idx))] for r in rows[1:]
    }
    columns = [
        {
            "label": f"{r['label']}\n[{cams[r['name']].layer}]",
            "maps": cams[r["name"]].maps,
            "titles": [
                f"pred {names[int(preds[r['name']][i])]}"
                + (
                    ""
                    if r["name"] == "teacher"
                    else f"\nρ {fmt_score(scores[r['name']][j]['spearman'])} IoU {fmt_score(scores[r['name']][j]['iou'])}"
                )
                for j, i in enumerate(idx)
            ],
        }
        for r in rows
    ]
    titles = [
        f"test #{i}: {names[y]}" + (" (missed by some)" if any(preds[n][i] != y for n in preds) else "")
        for i, y in zip(idx, labels)
    ]
    pngs["gradcam"] = figs.gradcam_png([img.numpy() for img in images], columns, titles)
    means = {
        n: {
            k: float(np.nanmean([s[k] for s in v])) if any(not math.isnan(s[k]) for s in v) else math.nan
            for k in ("spearman", "iou")
        }
        for n, v in scores.items()
    }
    label_of = {r["name"]: r["label"] for r in rows}
    mean_rows = [[label_of[n], cams[n].layer, m["spearman"], m["iou"]] for n, m in means.items()]
    per_image = [
        [
            f"#{i} ({names[y]})",
            *[f"{fmt_score(scores[n][j]['spearman'])} / {fmt_score(scores[n][j]['iou'])}" for n in scores],
        ]
        for j, (i, y) in enumerate(zip(idx, labels))
    ]
    page.section(
        "gradcam",
        "Grad-CAM agreement with the teacher",
        paragraph(
            f"{CAM_METHOD} maps for the true class of {len(idx)} test images ({sum('missed' in t for t in titles)} "
            f"misclassified by at least one model), teacher layer <code>{esc(ref.layer)}</code>; each model's "
            "layer is named in its column. Agreement with the teacher per image: Spearman rank correlation "
            f"ρ of the maps / IoU of their top-{int(100 * TOP_FRACTION)} % regions (maps resized to the "
            "image size)."
        ),
        table(["model", "layer", "mean Spearman ρ", f"mean top-{int(100 * TOP_FRACTION)}% IoU"], mean_rows),
        figure(
            pngs["gradcam"],
            "Each row: a test image, then the Grad-CAM overlay of each model (red: most evidence for the true class).",
        ),
        table(["image", *[f"{label_of[n]} ρ / IoU" for n in scores]], per_image),
    )
    return {
        "method": CAM_METHOD,
        "target": "true class",
        "top_fraction": TOP_FRACTION,
        "images": idx.tolist(),
        "layers": {n: c.layer for n, c in cams.items()},
        "per_image": scores,
        "mean": means,
    }


def _environment_section(run: _Run, page: Page) -> None:
    bench = run.bench() or {}
    env = bench.get("environment", {})
    cpu = env.get("cpu", {})
    rows = [
        ["platform", env.get("platform") or platform.platform()],
        ["python", env.get("python") or platform.python_version()],
        ["CPU", cpu.get("model", "n/a")],
        ["cores (physical / logical)", f"{cpu.get('physical_cores')} / {cpu.get('logical_cores')}"],
        ["benchmark threads", cpu.get("threads_used")],
        ["GPUs", ", ".join(g["name"] for g in env.get("gpus", [])) or "none"],
        ["ONNX Runtime providers", ", ".join(env.get("ort_providers", [])) or "n/a"],
        ["git revision", env.get("git_revision") or "n/a"],
        ["benchmark time", env.get("timestamp", "n/a")],
    ]
    versions = {**run.summary.get("versions", {}), **env.get("versions", {}), **package_versions()}
    rows += [[f"version: {k}", v] for k, v in sorted(versions.items())]
    page.section("environment", "Environment and versions", table(["", "value"], rows))


def _lineage_section(run: _Run, page: Page) -> None:
    rows = []
    for st in run.summary.get("stages", []):
        rec_path = run.root / "stages" / f"{st['name']}.json"
        rec = json.loads(rec_path.read_text()) if rec_path.is_file() else {}
        inputs = ", ".join(f"{k} {v[:8]}" for k, v in rec.get("inputs", {}).items()) or "-"
        rows.append(
            [
                st["name"],
                st["kind"],
                f"<code>{esc(st['output'])}</code>",
                f"<code>{(st.get('output_sha256') or '')[:16]}</code>",
                f"<code>{st['key'][:12]}</code>",
                inputs,
                st["status"],
                rec.get("seconds"),
                rec.get("finished") or "",
            ]
        )
    page.section(
        "lineage",
        "Lineage of every artifact",
        paragraph(
            "Each stage's output is identified by its sha256 (weights of a model directory, manifest of a "
            "bundle, the file otherwise); the key hashes its settings and its inputs' hashes: a stage "
            "re-runs exactly when it changes. Status is this run's (skipped: unchanged)."
        ),
        table(["stage", "kind", "output", "sha256", "key", "inputs (sha256)", "status", "seconds", "finished"], rows),
    )


def write_report(run_dir: str | os.PathLike, *, progress: bool = True) -> Path:
    """Write ``RUN/report/index.html`` (figures embedded; PNGs and ``gradcam.json`` beside it) atomically.

    Raises:
        ArtifactError: ``run_dir`` is not a finished run (no ``summary.json``) or a file it names is missing (4).
        InvalidInputError: ``RUN/report`` holds files edgekd did not write (exit 3).
    """
    root = Path(run_dir)
    run = _Run(root)
    out = root / REPORT_DIR
    check_output(out, overwrite=True, flag="report directory")
    page = Page(
        f"edgekd run: {run.summary['name']}",
        f"{esc(run.summary['data'])} ({run.summary['task']}, classes {esc(', '.join(run.summary['label_names']))}); "
        f"run directory <code>{esc(root)}</code>; configuration <code>{esc(run.summary.get('config'))}</code>",
    )
    pngs: dict[str, bytes] = {}
    _summary_section(run, page, pngs)
    if run.summary.get("search"):
        _search_section(run, page, pngs)
    _kd_section(run, page, pngs)
    _pareto_section(run, page, pngs)
    _size_section(run, page, pngs)
    cams: dict[str, Any] = {}
    if run.summary["task"] == "segmentation":  # masks: Dice/HD95 per stage and overlays replace ROC, ECE, Grad-CAM
        segmentation_sections(run, page, pngs)
        _curves_section(run, page, pngs)
    else:
        _roc_section(run, page, pngs)
        _calibration_section(run, page, pngs)
        _curves_section(run, page, pngs)
        cams = _gradcam_section(run, page, pngs, out)
    _environment_section(run, page)
    _lineage_section(run, page)
    expected = section_ids(run.summary["task"], search=bool(run.summary.get("search")))
    assert tuple(sid for sid, _, _ in page.sections) == expected, "report sections out of step with section_ids"
    with atomic_dir(out) as tmp:
        (tmp / MARKER_FILE).write_text("edgekd report\n")
        (tmp / "figures").mkdir()
        for name, png in pngs.items():
            (tmp / "figures" / f"{name}.png").write_bytes(png)
        (tmp / "gradcam.json").write_text(json.dumps(cams, indent=2, default=float) + "\n")
        (tmp / "index.html").write_text(page.render(), encoding="utf-8")
    return out / "index.html"
