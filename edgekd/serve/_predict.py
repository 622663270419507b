"""``edgekd predict``: classify image files, folders, globs or a data spec with a bundle or model directory.

Images are decoded and preprocessed with the bundle's own recipe (``preprocess.json``) and run in batches.
An image that cannot be read is *skipped with its reason*: it appears in the output (the ``error`` column of
a CSV, ``skipped`` in JSON, an ``OperationOutcome`` in FHIR) and in :attr:`PredictResult.skipped`, and the
CLI exits 4. The output file is written atomically and never replaces an existing file unless ``overwrite``.

Inputs are checked against the model's intended use before they are classified (:class:`~edgekd.specs.IntendedUse`):
a DICOM file outside it (another Modality, BodyPartExamined, ViewPosition or photometric family) is *refused*
(``kind: out-of-scope``) unless ``allow_out_of_scope``, when it is answered with ``intended_use: out-of-scope``
and the reason; a DICOM object that is no image (segmentation, report, RT object, waveform, presentation state,
encapsulated document...) is refused whatever the flag (``kind: not-an-image``). A refused input is listed like
a skipped one, and the CLI exits 3 when nothing was unreadable. Inputs without a DICOM header (PNG, JPEG, array
data) cannot be checked: they are answered and marked ``intended_use: not-checkable`` when the model records an
intended use. Every prediction also carries its out-of-distribution score and flag (:mod:`._ood`).

Output formats, chosen by the file suffix:

* ``.csv``: ``path, label, p_<class>..., [decision, threshold,] ood_score, out_of_distribution, intended_use,
  scope_reason, error``;
* ``.json``: ``{"model": ..., "predictions": [...], "skipped": [...]}``;
* ``.json`` with ``fhir=True``: a FHIR ``Bundle`` of ``DiagnosticReport`` s (see :mod:`._fhir`);
  ``.ndjson`` with ``fhir=True``: one resource per line (FHIR bulk-data style).

Example:
    >>> res = predict("bundles/student-int8", ["scans/"], out="preds.csv")
    >>> len(res.predictions), [(s.source, s.reason) for s in res.skipped]
    (41, [('scans/broken.png', 'corrupt or truncated image (...)')])
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from edgekd.data import Task, load_data
from edgekd.data._dicom import dicom_attributes
from edgekd.errors import EdgeKDError, InvalidInputError
from edgekd.modeldir import atomic_write_text
from edgekd.serve._fhir import DISCLAIMER, fhir_bundle, require_fhir
from edgekd.serve._images import InputFile, collect_inputs, decode_image, input_attributes, non_image_reason, read_bytes
from edgekd.serve._masks import MaskFolder
from edgekd.serve._model import LoadedModel, ModelInfo, Prediction, load_model
from edgekd.specs import ScopeCheck

__all__ = ["PredictResult", "Skipped", "predict", "write_predictions", "output_format", "OUTPUT_FORMATS"]

OUTPUT_FORMATS = {".csv": "csv", ".json": "json", ".ndjson": "ndjson"}
_PROGRESS_MIN = 256  # images; below this a run is short enough to need no bar


SKIP_KINDS = ("unreadable", "out-of-scope", "not-an-image")


@dataclass(frozen=True)
class Skipped:
    """An input that produced no prediction, and why: ``unreadable`` (missing, corrupt...), ``out-of-scope``
    (outside the model's intended use) or ``not-an-image`` (a DICOM object that is never classified)."""

    source: str
    reason: str
    kind: str = "unreadable"

    @property
    def refused(self) -> bool:
        return self.kind != "unreadable"


@dataclass(frozen=True)
class _Input:
    """An input read far enough to check it (its DICOM attributes, None for other formats); decoded later."""

    attributes: dict[str, str] | None
    decode: Any


@dataclass
class PredictResult:
    """Predictions, skipped inputs and the model they came from."""

    model: ModelInfo
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    out: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model.to_json(),
            "disclaimer": DISCLAIMER,
            "n_predicted": len(self.predictions),
            "n_skipped": len(self.skipped),
            "predictions": [p.to_json() for p in self.predictions],
            "skipped": [{"source": s.source, "reason": s.reason, "kind": s.kind} for s in self.skipped],
        }

    @property
    def unreadable(self) -> list[Skipped]:
        return [s for s in self.skipped if not s.refused]

    @property
    def refused(self) -> list[Skipped]:
        return [s for s in self.skipped if s.refused]


def output_format(out: str | os.PathLike, *, fhir: bool = False) -> str:
    """``csv``, ``json``, ``ndjson``, ``fhir-json`` or ``fhir-ndjson`` from the suffix of ``out``."""
    fmt = OUTPUT_FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise InvalidInputError(f"cannot tell the output format of {out}", "use a .csv, .json or .ndjson file")
    if fhir:
        if fmt == "csv":
            raise InvalidInputError("FHIR output is JSON", "use --out FILE.json (a Bundle) or FILE.ndjson")
        return f"fhir-{fmt}"
    if fmt == "ndjson":
        raise InvalidInputError(".ndjson output is for FHIR resources", "add --fhir, or use .json or .csv")
    return fmt


def _csv_text(res: PredictResult) -> str:
    info = res.model
    binary = info.task is Task.BINARY and info.threshold is not None
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "path",
            "label",
            *(f"p_{n}" for n in info.labels),
            *(["decision", "threshold"] if binary else []),
            "ood_score",
            "out_of_distribution",
            "intended_use",
            "scope_reason",
            "error",
        ]
    )
    for p in res.predictions:
        probs = [f"{p.probabilities[n]:.6f}" for n in info.labels]
        ood = [
            "" if p.ood_score is None else f"{p.ood_score:.4f}",
            "" if p.out_of_distribution is None else str(p.out_of_distribution).lower(),
        ]
        w.writerow(
            [
                p.source,
                p.label,
                *probs,
                *([p.decision, f"{info.threshold:g}"] if binary else []),
                *ood,
                p.intended_use,
                p.scope_reason,
                "",
            ]
        )
    for s in res.skipped:
        scope = [s.kind, s.reason] if s.refused else ["", ""]
        w.writerow([s.source, "", *([""] * len(info.labels)), *(["", ""] if binary else []), "", "", *scope, s.reason])
    return buf.getvalue()


def write_predictions(
    res: PredictResult, out: str | os.PathLike, *, fhir: bool = False, overwrite: bool = False
) -> Path:
    """Write ``res`` atomically to ``out`` in the format its suffix names (see the module docstring).

    Raises:
        InvalidInputError: ``out`` exists and ``overwrite`` is false, or an unknown suffix (exit 3).
    """
    fmt, path = output_format(out, fhir=fhir), Path(out)
    if path.exists() and not overwrite:
        raise InvalidInputError(f"{path} already exists", "pass --overwrite to replace it, or choose another --out")
    skipped = [(s.source, s.reason, s.kind) for s in res.skipped]
    if fmt == "csv":
        text = _csv_text(res)
    elif fmt == "json":
        text = json.dumps(res.to_json(), indent=2) + "\n"
    else:
        bundle = fhir_bundle(res.predictions, res.model, skipped)
        if fmt == "fhir-json":
            text = json.dumps(bundle, indent=2) + "\n"
        else:
            text = "".join(json.dumps(e["resource"]) + "\n" for e in bundle["entry"])
    atomic_write_text(path, text)
    return path


def _data_items(spec: str, split: str, channels: int) -> Iterator[tuple[str, Any]]:
    """(source, loader) for every item of one split of a data spec (DICOM items carry their attributes)."""
    bundle = load_data(spec)
    ds = bundle.split(split)
    if bundle.channels != channels:
        raise InvalidInputError(f"data {spec} has {bundle.channels}-channel images; the model reads {channels}")
    paths = getattr(ds, "paths", None)
    dicom = type(ds).__name__ == "DicomDataset"
    for i in range(len(ds)):
        source = str(paths[i]) if paths is not None else f"{bundle.spec}#{split}[{i}]"

        def load(i: int = i) -> _Input:
            attrs = dicom_attributes(paths[i]) if dicom else None
            return _Input(attrs, lambda: ds[i][0].numpy())

        yield source, load


def _file_items(files: list[InputFile], channels: int, skipped: list[Skipped]) -> Iterator[tuple[str, Any]]:
    for f in files:
        if f.error is not None or f.path is None:
            skipped.append(Skipped(f.source, f.error or "not a file"))
            continue

        def load(p: Any = f.path) -> _Input:
            data = read_bytes(p)
            return _Input(input_attributes(data), lambda: decode_image(data, channels))

        yield f.source, load


def _chunks(items: Iterator[tuple[str, Any]], size: int) -> Iterator[list[tuple[str, Any]]]:
    chunk: list[tuple[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _progress(total: int, enabled: bool) -> Progress:
    return Progress(
        TextColumn("predict"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled or total < _PROGRESS_MIN,
    )


def check_input(
    model: LoadedModel, attributes: dict[str, str] | None, *, allow_out_of_scope: bool
) -> tuple[ScopeCheck, Skipped | None]:
    """The intended-use check of one input, and the refusal when it is refused (source filled in by the caller)."""
    reason = non_image_reason(attributes)
    if reason is not None:
        return ScopeCheck("not-an-image", reason), Skipped("", reason, "not-an-image")
    scope = model.check_scope(attributes)
    if scope.status == "out-of-scope" and not allow_out_of_scope:
        why = f"outside the model's intended use: {scope.reason} (--allow-out-of-scope answers it, flagged)"
        return scope, Skipped("", why, "out-of-scope")
    return scope, None


def _run(
    model: LoadedModel,
    items: Iterator[tuple[str, Any]],
    total: int,
    batch: int,
    res: PredictResult,
    progress: bool,
    allow_out_of_scope: bool,
    masks: MaskFolder | None = None,
) -> None:
    with _progress(total, progress) as bar:
        task = bar.add_task("predict", total=total)
        for chunk in _chunks(items, batch):
            images, sources, scopes = [], [], []
            for source, load in chunk:
                try:
                    item = load()
                    scope, refused = check_input(model, item.attributes, allow_out_of_scope=allow_out_of_scope)
                    if refused is not None:
                        res.skipped.append(Skipped(source, refused.reason, refused.kind))
                        continue
                    images.append(item.decode())
                    sources.append(source)
                    scopes.append(scope)
                except EdgeKDError as e:  # unreadable: reported with its reason, never dropped
                    res.skipped.append(Skipped(source, e.message))
            if images:
                logits, ood = model.forward(model.prepare(images))
                if model.info.task is Task.SEGMENTATION:
                    sizes = [tuple(im.shape[-2:]) for im in images]
                    preds = model.segment(logits, sources, sizes=sizes, ood=ood, scopes=scopes)
                    for im, p in zip(images, preds):
                        if masks is not None and p.mask is not None:
                            masks.add(p.source, im, p.mask, p.probabilities)
                else:
                    preds = model.classify(logits, sources, ood=ood, scopes=scopes)
                res.predictions += preds
            bar.advance(task, len(chunk))


def predict(
    model: str | os.PathLike | LoadedModel,
    inputs: Sequence[str] = (),
    *,
    data: str | None = None,
    split: str = "test",
    batch: int = 32,
    out: str | os.PathLike | None = None,
    fhir: bool = False,
    overwrite: bool = False,
    precision: str | None = None,
    threshold: float | None = None,
    verify: bool = True,
    threads: int = 0,
    progress: bool = True,
    allow_out_of_scope: bool = False,
    runtime: str | None = None,
    masks: str | os.PathLike | None = None,
) -> PredictResult:
    """Classify images with a bundle (ONNX Runtime) or a model directory (PyTorch) and optionally write them.

    Args:
        model: a bundle, a model directory, or a :class:`LoadedModel`.
        inputs: image files, folders (searched recursively) and glob patterns.
        data: a data spec (``imagefolder:DIR``, ``csv:F``, ``pneumoniamnist``, ...); its ``split`` is classified.
        batch: images per model call.
        out: write the results here (``.csv``, ``.json``, ``.ndjson``); checked before any work.
        fhir: write FHIR ``DiagnosticReport`` s instead (needs ``fhir.resources``).
        overwrite: replace an existing ``out``.
        precision, threshold, verify, threads, runtime: see :func:`~edgekd.serve.load_model`.
        progress: a progress bar on stderr for long runs.
        allow_out_of_scope: answer DICOM inputs outside the model's intended use (flagged) instead of refusing
            them; objects that are no image are refused whatever this says.
        masks: segmentation models: write a folder with each image's class-index mask PNG and colour overlay
            (:class:`~edgekd.serve._masks.MaskFolder`; checked before any work, replaced only with ``overwrite``).

    Returns:
        A :class:`PredictResult`; inputs that could not be read or were refused are in ``skipped`` (and in the
        output file).

    Raises:
        InvalidInputError: no inputs, a bad batch size, output format or data spec, or ``out`` exists without
            ``overwrite`` (exit 3).
        ArtifactError: a bad model path (exit 4).
        DependencyError: ``fhir`` without ``fhir.resources`` (exit 5).
        VerificationError: a modified bundle (exit 6).
    """
    if not inputs and data is None:
        raise InvalidInputError("nothing to predict", "pass image files, folders or globs, or --data SPEC")
    if batch < 1:
        raise InvalidInputError(f"batch size must be >= 1, got {batch}")
    if out is not None:
        output_format(out, fhir=fhir)
        if Path(out).is_dir():
            raise InvalidInputError(f"--out {out} is a folder", "give --out a file name, e.g. preds.csv")
        if Path(out).exists() and not overwrite:
            raise InvalidInputError(f"{out} already exists", "pass --overwrite to replace it, or choose another --out")
    if fhir:
        require_fhir()
    loaded = (
        model
        if isinstance(model, LoadedModel)
        else load_model(
            model, precision=precision, threshold=threshold, verify=verify, threads=threads, runtime=runtime
        )
    )
    if masks is not None and loaded.info.task is not Task.SEGMENTATION:
        raise InvalidInputError(f"--masks needs a segmentation model; {loaded.info.name} is {loaded.info.task.value}")
    res = PredictResult(model=loaded.info)
    channels = loaded.preprocess.data_channels
    files = collect_inputs(list(inputs))
    items: list[tuple[str, Any]] = list(_file_items(files, channels, res.skipped))
    if data is not None:
        items += list(_data_items(data, split, channels))
    if masks is None:
        _run(loaded, iter(items), len(items), batch, res, progress, allow_out_of_scope)
    else:
        with MaskFolder(
            masks, overwrite=overwrite, inputs=(*inputs, model if not isinstance(model, LoadedModel) else None)
        ) as folder:
            _run(loaded, iter(items), len(items), batch, res, progress, allow_out_of_scope, folder)
    if out is not None:
        res.out = write_predictions(res, out, fhir=fhir, overwrite=overwrite)
    return res
