"""``MODEL_CARD.md`` for a bundle (after Mitchell et al., "Model Cards for Model Reporting", FAT* 2019).

Sections: what the model is, data, metrics, files and parity, intended use and limits (with a
not-a-medical-device note for medical imaging data) and a ten-line onnxruntime example that uses only
numpy, onnxruntime and PIL and applies ``preprocess.json``.
"""

from __future__ import annotations

import math
from typing import Any

from edgekd.export._manifest import Manifest
from edgekd.modeldir import ModelCard
from edgekd.specs import Task

__all__ = ["render_model_card", "is_medical", "RUN_SNIPPET"]

_MEDICAL_WORDS = (
    "medmnist",
    "pneumonia",
    "chest",
    "xray",
    "x-ray",
    "derma",
    "path",
    "blood",
    "organ",
    "retina",
    "breast",
    "oct",
    "tissue",
    "ct",
    "mri",
    "fundus",
    "lesion",
    "tumor",
    "tumour",
    "clinical",
    "patient",
)
_METRICS = ("acc", "balanced_acc", "f1_macro", "auroc", "sensitivity", "specificity", "exact_match")
_SEG_METRICS = ("dice", "iou", "hd95", "acc")  # Dice and IoU of the foreground classes, HD95 in pixels

RUN_SNIPPET = """\
import json, numpy as np, onnxruntime as ort
from PIL import Image
pre, labels = json.load(open("preprocess.json")), json.load(open("labels.json"))["labels"]
img = Image.open("image.png").convert("L" if pre["data_channels"] == 1 else "RGB")
img = img.resize(tuple(pre["input_size"][::-1]), Image.BILINEAR)  # PIL takes (W, H)
x = np.asarray(img, np.float32).reshape(img.height, img.width, -1).transpose(2, 0, 1) * pre["scale"]
x = np.repeat(x, pre["in_chans"] // x.shape[0], axis=0)  # grayscale -> 3 channels in "repeat" mode
x = (x - np.float32(pre["mean"])[:, None, None]) / np.float32(pre["std"])[:, None, None]
sess = ort.InferenceSession("{model}", providers=["CPUExecutionProvider"])
logits = sess.run(None, {{pre["input_name"]: x[None].astype(np.float32)}})[0][0]
print(labels[int(logits.argmax())], logits)
"""
# a segmenter: the mask is the class index of every pixel, at the model's resolution
SEG_RUN_SNIPPET = RUN_SNIPPET.replace(
    "print(labels[int(logits.argmax())], logits)",
    "mask = logits.argmax(0).astype(np.uint8)  # [H, W] class indices at the model's resolution\n"
    'Image.fromarray(mask).resize(img.size, Image.NEAREST).save("mask.png")  # back to the image\'s size',
)


def is_medical(card: ModelCard) -> bool:
    """Heuristic: the training data or labels look like medical imaging."""
    words = " ".join([card.lineage.data or "", *card.label_names, card.spec.name]).lower()
    tokens = set(words.replace(":", " ").replace(",", " ").replace("/", " ").replace("_", " ").split())
    return any(w in words if len(w) > 4 else w in tokens for w in _MEDICAL_WORDS)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def _what(card: ModelCard) -> str:
    return "2D image segmenter" if card.task is Task.SEGMENTATION else f"{card.task.value} image classifier"


def _activation(card: ModelCard) -> str:
    if card.task is Task.SEGMENTATION:
        return "per pixel: softmax over the classes gives probabilities, their argmax the mask"
    return f"{'sigmoid per label' if card.task is Task.MULTILABEL else 'softmax'} gives probabilities"


def _overview(m: Manifest, card: ModelCard) -> list[str]:
    seg = card.task is Task.SEGMENTATION
    inp = m.inputs[0] if m.inputs else None
    macs = f"{card.macs:,}" if card.macs else "n/a"
    return [
        f"# Model card: {m.name}",
        "",
        f"A {_what(card)} ({card.spec.name}, {card.params or 0:,} parameters, {macs} MACs "
        f"per image) with {len(card.label_names)} {'class(es)' if seg else 'output(s)'}: {', '.join(card.label_names)}.",
        f"Input `{inp.name}` {inp.shape} {inp.dtype} (see `preprocess.json`); output `{m.outputs[0].name}` "
        f"{m.outputs[0].shape} raw logits ({_activation(card)})."
        if inp and m.outputs
        else "",
        f"Made by `{card.lineage.command or 'edgekd'}` (stage: {card.lineage.stage}); exported for target "
        f"**{m.target}** with the {m.exporter.get('exporter', 'n/a')} exporter (opset {m.exporter.get('opset', 'n/a')}).",
        "",
    ]


def _data_and_metrics(card: ModelCard) -> list[str]:
    lines = [
        "## Data",
        "",
        f"Trained on `{card.lineage.data or 'unknown'}`"
        + (f" with teachers {', '.join(card.lineage.teachers)}" if card.lineage.teachers else "")
        + ".",
        "",
    ]
    lines += ["## Metrics", ""]
    key, table = ("dice", _SEG_METRICS) if card.task is Task.SEGMENTATION else ("acc", _METRICS)
    rows = [(split, vals) for split, vals in card.metrics.items() if isinstance(vals, dict) and key in vals]
    if not rows:
        return [*lines, "No metrics were recorded in the model directory.", ""]
    names = [k for k in table if any(k in vals for _, vals in rows)]
    lines += ["| split | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {split} | " + " | ".join(_fmt(vals.get(k, "")) for k in names) + " |" for split, vals in rows]
    return [*lines, ""]


def _files_and_parity(m: Manifest) -> list[str]:
    lines = ["## Files and parity", "", "| file | kind | precision | bytes |", "|---|---|---|---|"]
    lines += [f"| `{f.name}` | {f.kind} | {f.precision.value if f.precision else ''} | {f.bytes:,} |" for f in m.files]
    lines += ["", "Parity with the PyTorch model (each file in its own runtime, CPU):", ""]
    lines += [f"- {p.summary()} on {p.samples or 'samples'}" for p in m.parity] or ["- not checked"]
    lines += ["", "Run `edgekd verify <bundle>` to re-check every sha256 and re-run parity from `parity.npz`.", ""]
    return lines


def _scope_lines(m: Manifest) -> list[str]:
    use = m.intended_use
    lines = []
    if use is not None and not use.empty:
        origin = "seen in the DICOM training data" if use.source == "dicom" else "declared"
        lines.append(
            f"- **Intended use** ({origin}): {use.describe()}. `edgekd predict` and `edgekd serve` refuse "
            "a DICOM input outside it (unless `--allow-out-of-scope`) and flag inputs without a DICOM "
            "header as not checkable."
        )
    else:
        lines.append("- No intended use is recorded (modality, body part, view): inputs are not checked against one.")
    point = m.extra.get("operating_point") if isinstance(m.extra, dict) else None
    if isinstance(point, dict) and "threshold" in point:
        lines.append(
            f"- Operating threshold {point['threshold']:.6g} on P({m.label_names[-1]}), chosen on the "
            f"{point.get('source', 'validation split')} for sensitivity >= {point['target_sensitivity']:g} "
            f"(there: sensitivity {point['sensitivity']:.3f}, specificity {point['specificity']:.3f})."
        )
    if m.ood and m.ood.get("available"):
        lines.append(
            f"- Every prediction carries an out-of-distribution score from `drift_reference.npz` "
            f"({' and '.join(m.ood.get('spaces', []))} spaces, {m.ood.get('images')} validation images); "
            "an image beyond the 99.5th percentile of the combined score on held-out validation images "
            "is flagged."
        )
    return lines


def _use_and_limits(card: ModelCard, m: Manifest | None = None) -> list[str]:
    lines = [
        "## Intended use and limits",
        "",
        *(_scope_lines(m) if m is not None else []),
        "- Intended for research and for evaluating edge deployment of compressed models on data like the "
        "training data above; accuracy on other populations, devices or image sources is unknown.",
        "- Compression (distillation, pruning, FP16/INT8) can shift errors between classes; check the "
        "per-class metrics on your own data before use.",
        "- Inputs must be preprocessed exactly as in `preprocess.json`; other resizing or normalisation "
        "silently degrades accuracy.",
    ]
    if is_medical(card):
        lines += [
            "- **Not a medical device.** This model has not been cleared or approved by any regulator and must "
            "not be used for diagnosis or treatment decisions. Any clinical use needs prospective clinical "
            "validation on the target population and equipment, and oversight by qualified clinicians.",
        ]
    return [*lines, ""]


def _how_to_run(m: Manifest) -> list[str]:
    onnx_files = [f.name for f in m.files if f.kind == "onnx"]
    model = onnx_files[0] if onnx_files else "model.onnx"
    snippet = SEG_RUN_SNIPPET if m.task is Task.SEGMENTATION else RUN_SNIPPET
    return [
        "## How to run it (numpy + onnxruntime + PIL)",
        "",
        "```python",
        snippet.format(model=model).rstrip(),
        "```",
        "",
        "PIL's bilinear resize antialiases when shrinking, `preprocess.json` does not: results differ slightly "
        "when the image is larger than the model input.",
        "",
    ]


def _other_runtimes(m: Manifest) -> list[str]:
    """One section per runtime file added to the bundle (``extra.runtimes``: OpenVINO, ExecuTorch)."""
    lines = []
    runtimes = m.extra.get("runtimes", {}) if isinstance(m.extra, dict) else {}
    for name, info in runtimes.items():
        if isinstance(info, dict) and info.get("usage"):
            files = ", ".join(f"`{f}`" for f in info.get("files", []))
            lines += [f"## How to run it with {name} ({files})", "", "```python", info["usage"].rstrip(), "```", ""]
    return lines


def render_model_card(manifest: Manifest, card: ModelCard) -> str:
    """The Markdown text of ``MODEL_CARD.md``."""
    parts = [
        _overview(manifest, card),
        _data_and_metrics(card),
        _files_and_parity(manifest),
        _use_and_limits(card, manifest),
        _how_to_run(manifest),
        _other_runtimes(manifest),
    ]
    return "\n".join(line for part in parts for line in part)
