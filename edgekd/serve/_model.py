"""A bundle (or a model directory) loaded for inference, with its preprocessing, labels and threshold.

A bundle is checked before it is used: :func:`~edgekd.export.verify_bundle` re-hashes every file and re-runs
the stored parity samples, so a modified model file, label list or preprocessing recipe never serves a
prediction (``verify=False`` skips this and is reported as ``verified: false``). The ONNX file served is the
bundle's primary one (the first in the manifest: INT8 for a quantized bundle, FP32 for an exported one)
unless ``precision`` names another; it runs in ONNX Runtime on the CPU. A model directory runs in PyTorch.

Binary tasks decide at an *operating threshold* on P(positive class) (label index 1): the operating point
that ``edgekd run`` (or ``export`` / ``quantize --target-sensitivity``) chose on validation
(``manifest.extra.operating_point``), else the first of ``operating_threshold``, ``decision_threshold``,
``threshold`` found in the bundle manifest's ``extra``, then in its ``metrics`` sections (the model card's
``extra`` for a model directory), else 0.5. Where it came from is recorded in :attr:`ModelInfo.threshold_source`.

Every prediction also carries the model's *intended use* check (:class:`~edgekd.specs.IntendedUse`, from the
manifest or model card) and an *out-of-distribution score* (:mod:`._ood`) from the reference the bundle carries
(``drift_reference.npz``; a model directory's own, when it matches its weights). For a bundle the penultimate
features come from its ONNX graph, added as an extra session output at load time (the file is unchanged).

Example:
    >>> model = load_model("bundles/student-int8")
    >>> model.info.precision, model.info.threshold, model.info.threshold_source
    ('int8', 0.5, 'default: the bundle records no operating threshold')
    >>> x = model.prepare([image_u8_chw])          # the bundle's own preprocessing
    >>> model.classify(model.logits(x), ["a.png"])[0].label
    'pneumonia'
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from edgekd.data import Preprocess, Task
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.export import (
    MANIFEST_FILE,
    PREPROCESS_FILE,
    Manifest,
    TensorInfo,
    check_isa,
    compile_openvino,
    feature_session,
    feature_tensor,
    infer_openvino,
    load_pte,
    onnx_io,
    read_manifest,
    run_pte,
    safe_model_name,
    verify_bundle,
)
from edgekd.metrics import probabilities
from edgekd.modeldir import WEIGHTS_FILE, is_model_dir, load_model_dir, read_json, sha256_file, validate_file
from edgekd.monitor import Reference, logits_and_features, read_reference
from edgekd.serve._ood import OODScore, OODScorer
from edgekd.specs import IntendedUse, ScopeCheck

__all__ = [
    "DEFAULT_THRESHOLD",
    "RUNTIMES",
    "LoadedModel",
    "ModelInfo",
    "Prediction",
    "is_bundle",
    "load_model",
]

DEFAULT_THRESHOLD = 0.5
_THRESHOLD_KEYS = ("operating_threshold", "decision_threshold", "threshold")


def is_bundle(path: str | os.PathLike) -> bool:
    """A directory holding a bundle ``manifest.json``."""
    return Path(path).is_dir() and (Path(path) / MANIFEST_FILE).is_file()


@dataclass(frozen=True)
class ModelInfo:
    """What a prediction was made with: recorded in every output and in the FHIR device.

    Attributes:
        name: the name the model is served and reported under (URL- and file-safe).
        architecture: the model's registry name (``small:resnet8x4``).
        source: the bundle or model directory as given.
        kind: ``"bundle"`` or ``"model_dir"``.
        file: the model file that runs (``model.int8.onnx``, ``model.safetensors``).
        precision: ``fp32``, ``fp16`` or ``int8``.
        sha256: sha256 of that file.
        version: the bundle's (or model directory's) creation time stamp.
        task, labels: the task and the class names in logit order.
        threshold: the operating threshold of a binary task (``None`` otherwise).
        threshold_source: where the threshold came from.
        verified: whether the bundle's hashes and parity were checked at load time.
        intended_use: what the model is meant to classify (None: not recorded).
        ood_reference: the out-of-distribution reference used, or why there is none.
        runtime: what runs the file: ``ort``, ``openvino``, ``executorch`` (``torch`` for a model directory).
        runtime_source: why that runtime (given, the fastest the bundle records, or the default).
    """

    name: str
    architecture: str
    source: str
    kind: str
    file: str
    precision: str
    sha256: str
    version: str
    task: Task
    labels: tuple[str, ...]
    threshold: float | None
    threshold_source: str
    verified: bool
    intended_use: IntendedUse | None = None
    ood_reference: str = "none"
    runtime: str = "ort"
    runtime_source: str = "default"

    def to_json(self) -> dict[str, Any]:
        use = self.intended_use.model_dump(mode="json") if self.intended_use is not None else None
        return {**asdict(self), "task": self.task.value, "labels": list(self.labels), "intended_use": use}


@dataclass(frozen=True)
class Prediction:
    """One classified image.

    Attributes:
        source: the file, data item or request it came from.
        label: the most probable class (multi-label: the labels at or above the threshold, ``;``-joined).
        probabilities: per class name (softmax; sigmoid per label for multi-label tasks).
        decision: binary tasks: the class decided at the operating threshold on P(label 1).
        ood_score, out_of_distribution, ood_spaces: see :mod:`edgekd.serve._ood` (None without a reference).
        intended_use: the input checked against the model's intended use: ``in-scope``, ``out-of-scope``
            (answered only with ``--allow-out-of-scope``), ``not-checkable`` or ``unrestricted``.
        scope_reason: why, when not in scope.
        mask: segmentation tasks: the class index of every pixel (``uint8 [H, W]``, at the input image's own
            size); ``label`` then lists the classes present besides the background (``;``-joined, the
            background's name when none is) and ``probabilities`` holds each class's fraction of the image area.
    """

    source: str
    label: str
    probabilities: dict[str, float]
    decision: str | None = None
    ood_score: float | None = None
    out_of_distribution: bool | None = None
    ood_spaces: dict[str, float | None] | None = None
    intended_use: str = "unrestricted"
    scope_reason: str = ""
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "mask"}
        if self.mask is not None:  # the mask itself goes to a PNG, an OIP tensor or a DICOM SEG, not to JSON
            out["mask_shape"] = list(self.mask.shape)
        return out

    @property
    def flags(self) -> list[str]:
        """What a reader must know before trusting this answer (empty: nothing)."""
        out = []
        if self.out_of_distribution:
            out.append("out of distribution")
        if self.intended_use in ("out-of-scope", "not-checkable"):
            out.append(self.intended_use.replace("-", " "))
        return out


InferFn = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
FEATURES = "edgekd_penultimate_features"  # the key of the features in run() results (never served)


@dataclass
class LoadedModel:
    """A model ready to run: :meth:`prepare` images, :meth:`run` tensors, :meth:`classify` logits.

    ``runner`` returns the model's outputs in order, then (when ``has_features``) its penultimate features.
    """

    info: ModelInfo
    preprocess: Preprocess
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    runner: InferFn
    has_features: bool = False
    ood: OODScorer | None = None
    intended_use: IntendedUse | None = None

    def check_scope(self, attributes: dict[str, str] | None) -> ScopeCheck:
        """An input's DICOM attributes (None: no DICOM header) against the intended use."""
        if self.intended_use is None:
            return ScopeCheck("unrestricted")
        return self.intended_use.check(attributes)

    def ood_scores(self, x: np.ndarray, results: dict[str, np.ndarray]) -> list[OODScore] | None:
        """Per-row OOD scores of the preprocessed batch ``x`` given :meth:`run`'s results (None: no reference)."""
        if self.ood is None:
            return None
        return self.ood.score(x, results.get(FEATURES))

    @property
    def static_batch(self) -> int | None:
        """The fixed batch size of a static-batch ONNX file, else ``None``."""
        first = self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else None
        return first if isinstance(first, int) and first > 0 else None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All outputs by name for already validated ``feeds`` (a static batch runs in chunks)."""
        fixed = self.static_batch
        rows = len(next(iter(feeds.values())))
        names = [o.name for o in self.outputs] + ([FEATURES] if self.has_features else [])
        if fixed is None or rows == fixed:
            return dict(zip(names, self.runner(feeds)))
        if rows % fixed:
            raise InvalidInputError(f"{self.info.name} has a static batch of {fixed}; got {rows} rows")
        parts = [self.runner({k: v[i : i + fixed] for k, v in feeds.items()}) for i in range(0, rows, fixed)]
        return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(names)}

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The first output (the logits) for a preprocessed float32 batch ``[N, C, H, W]``."""
        return self.forward(x)[0]

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[OODScore] | None]:
        """Logits and OOD scores of a preprocessed float32 batch ``[N, C, H, W]`` (one model call)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = self.run({self.inputs[0].name: x})
        return np.asarray(out[self.outputs[0].name], dtype=np.float32), self.ood_scores(x, out)

    def prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The bundle's preprocessing on raw ``uint8 [C, H, W]`` images (any size) -> float32 ``[N, C, H, W]``."""
        pre = self.preprocess
        for im in images:
            if im.ndim != 3 or im.shape[0] != pre.data_channels:
                raise InvalidInputError(
                    f"image of shape {tuple(im.shape)}: {self.info.name} reads "
                    f"{pre.data_channels}-channel [C, H, W] images"
                )
        if not images:
            return np.zeros((0, pre.in_chans, *pre.input_size), np.float32)
        return np.concatenate([pre.numpy(im[None]) for im in images])

    def classify(
        self,
        logits: np.ndarray,
        sources: Sequence[str],
        *,
        ood: Sequence[OODScore] | None = None,
        scopes: Sequence[ScopeCheck] | None = None,
    ) -> list[Prediction]:
        """Labels, per-class probabilities and, for binary tasks, the decision at the operating threshold; with
        the OOD scores and intended-use checks of the rows when given."""
        info = self.info
        if info.task is Task.SEGMENTATION:
            return self.segment(logits, sources, ood=ood, scopes=scopes)
        probs = probabilities(logits, info.task)
        out = []
        for i, (src, p) in enumerate(zip(sources, probs)):
            per_class = {name: float(v) for name, v in zip(info.labels, p)}
            extra: dict[str, Any] = {}
            if ood is not None:
                s = ood[i].to_json()
                extra.update(
                    ood_score=s["ood_score"], out_of_distribution=s["out_of_distribution"], ood_spaces=s["ood_spaces"]
                )
            scope = scopes[i] if scopes is not None else self.check_scope(None)
            extra.update(intended_use=scope.status, scope_reason=scope.reason)
            if info.task is Task.MULTILABEL:
                label = ";".join(n for n, v in per_class.items() if v >= DEFAULT_THRESHOLD)
                out.append(Prediction(str(src), label, per_class, **extra))
                continue
            label = info.labels[int(np.argmax(p))]
            decision = None
            if info.task is Task.BINARY and info.threshold is not None:
                decision = info.labels[1] if p[1] >= info.threshold else info.labels[0]
            out.append(Prediction(str(src), label, per_class, decision, **extra))
        return out

    def segment(
        self,
        logits: np.ndarray,
        sources: Sequence[str],
        *,
        sizes: Sequence[tuple[int, int]] | None = None,
        ood: Sequence[OODScore] | None = None,
        scopes: Sequence[ScopeCheck] | None = None,
    ) -> list[Prediction]:
        """Masks of a segmentation model's logits ``[N, K, h, w]``: per-pixel logits resized (bilinear) to each
        input image's own ``(H, W)`` in ``sizes`` (default: the model's resolution), then the most probable class.
        """
        if logits.ndim != 4:
            raise InvalidInputError(f"{self.info.name}: segmentation logits must be [N, K, H, W], got {logits.shape}")
        labels = self.info.labels
        out = []
        for i, src in enumerate(sources):
            mask = _mask(logits[i], sizes[i] if sizes is not None else tuple(logits.shape[-2:]))
            area = np.bincount(mask.ravel(), minlength=len(labels)) / mask.size
            present = [labels[k] for k in range(1, len(labels)) if area[k] > 0]
            scope = scopes[i] if scopes is not None else self.check_scope(None)
            extra: dict[str, Any] = dict(intended_use=scope.status, scope_reason=scope.reason)
            if ood is not None:
                s = ood[i].to_json()
                extra.update(
                    ood_score=s["ood_score"], out_of_distribution=s["out_of_distribution"], ood_spaces=s["ood_spaces"]
                )
            per_class = {name: float(a) for name, a in zip(labels, area)}
            out.append(Prediction(str(src), ";".join(present) or labels[0], per_class, mask=mask, **extra))
        return out


def _mask(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[K, h, w]`` logits -> the ``uint8 [H, W]`` argmax mask at ``size`` (logits resized bilinearly first)."""
    t = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))[None]
    if tuple(t.shape[-2:]) != tuple(size):
        t = torch.nn.functional.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)
    return t[0].argmax(0).numpy().astype(np.uint8)


def _threshold(task: Task, *sections: Any, where: str, override: float | None) -> tuple[float | None, str]:
    """The operating threshold of a binary task and where it came from."""
    if task is not Task.BINARY:
        return None, "not a binary task"
    if override is not None:
        found: tuple[Any, str] | None = (override, "given")
    else:
        found = next(
            (
                (sec[k], f"{name}.{k}")
                for name, sec in sections
                if isinstance(sec, dict)
                for k in _THRESHOLD_KEYS
                if k in sec
            ),
            None,
        )
        point = next(
            (
                sec["operating_point"]
                for _, sec in sections
                if isinstance(sec, dict)
                and isinstance(sec.get("operating_point"), dict)
                and "threshold" in sec["operating_point"]
            ),
            None,
        )
        if point is not None:
            found = (point["threshold"], _point_source(point))
    if found is None:
        return DEFAULT_THRESHOLD, f"default: the {where} records no operating threshold"
    value, source = found
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise InvalidInputError(f"operating threshold {value!r} ({source}) is not a probability in (0, 1)")
    return float(value), source


def _point_source(point: dict[str, Any]) -> str:
    """``operating point: sensitivity >= 0.95 on the validation split of D by F (val sensitivity 0.953, ...)``."""
    try:
        return (
            f"operating point: sensitivity >= {float(point['target_sensitivity']):g} on the "
            f"{point.get('source', 'validation split')} (there: sensitivity {float(point['sensitivity']):.3f}, "
            f"specificity {float(point['specificity']):.3f})"
        )
    except (KeyError, TypeError, ValueError):
        return "manifest.extra.operating_point"


def _pick_file(m: Manifest, precision: str | None, root: Path) -> tuple[str, str]:
    onnx_files = [f for f in m.model_files() if f.kind == "onnx"]
    if not onnx_files:
        raise ArtifactError(f"bundle {root} has no ONNX file", "edgekd serves ONNX files; re-export the bundle")
    if precision is None:
        f = onnx_files[0]
    else:
        f = next((f for f in onnx_files if (f.precision.value if f.precision else "fp32") == precision), None)
        if f is None:
            have = ", ".join(sorted({(g.precision.value if g.precision else "fp32") for g in onnx_files}))
            raise InvalidInputError(f"bundle {root} has no {precision} ONNX file", f"it has: {have}")
    return f.name, f.precision.value if f.precision else "fp32"


RUNTIMES = ("ort", "openvino", "executorch")
_RUNTIME_KIND = {"openvino": "openvino", "executorch": "executorch"}


def _pick_runtime(m: Manifest, runtime: str | None) -> tuple[str, str]:
    """The runtime asked for, else the fastest at batch 1 that ``edgekd bench --record`` stored, else ort."""
    if runtime is not None:
        if runtime not in RUNTIMES:
            raise InvalidInputError(f"unknown runtime {runtime!r}", f"use one of {', '.join(RUNTIMES)}")
        return runtime, "given"
    fastest = m.extra.get("fastest_runtime") if isinstance(m.extra, dict) else None
    by_batch = fastest.get("by_batch", {}) if isinstance(fastest, dict) else {}
    best = by_batch.get("1") or (by_batch[min(by_batch, key=int)] if by_batch else None)
    if isinstance(best, dict) and best.get("runtime") in RUNTIMES:
        return str(best["runtime"]), f"the fastest measured at batch 1 on {fastest.get('cpu', 'this bundle')}"
    return "ort", "default: the bundle records no measured fastest runtime"


def _runtime_file(m: Manifest, runtime: str, precision: str, root: Path) -> str:
    kind = _RUNTIME_KIND[runtime]
    files = [f for f in m.model_files() if f.kind == kind]
    f = next((f for f in files if (f.precision.value if f.precision else "fp32") == precision), None)
    if f is None:
        have = ", ".join(g.name for g in files) or "none"
        raise InvalidInputError(
            f"bundle {root} has no {precision} {runtime} file (it has: {have})",
            f"add one: edgekd export {root} --format {runtime} --out NEW_BUNDLE",
        )
    return f.name


def _runtime_runner(m: Manifest, runtime: str, path: Path, threads: int, session: Any, features: str | None) -> InferFn:
    """Logits from OpenVINO / ExecuTorch; the OOD features (when the reference has a feature space) from the
    bundle's verified ONNX graph of the same precision in ONNX Runtime, so the score is the ORT server's."""
    lock = threading.Lock()  # an infer request / method runs one call at a time
    if runtime == "openvino":
        request = compile_openvino(path, threads=threads or psutil.cpu_count(logical=False) or 1).create_infer_request()

        def logits(x: np.ndarray) -> np.ndarray:
            return infer_openvino(request, x)  # on the compiled model's stream (faster than infer({0: x}))
    else:
        program = load_pte(path, threads=threads or None)
        info = m.extra.get("runtimes", {}).get("executorch", {})
        bound = int(info.get("max_batch") or 1)

        def logits(x: np.ndarray) -> np.ndarray:
            return run_pte(program, x, bound)

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = np.ascontiguousarray(next(iter(feeds.values())), dtype=np.float32)
        with lock:
            out = [logits(x)]
        if features is not None:
            out.append(session.run([features], feeds)[0])
        return out

    return run


def _read_preprocess(root: Path) -> Preprocess:
    path = root / PREPROCESS_FILE
    raw = read_json(path, "re-export the bundle")
    if not isinstance(raw, dict):
        raise ArtifactError(f"{path} must hold a JSON object, not {type(raw).__name__}", "re-export the bundle")
    fields = {k: v for k, v in raw.items() if k in Preprocess.model_fields}
    return validate_file(Preprocess, fields, path, "re-export the bundle")


def _load_bundle(
    root: Path,
    *,
    name: str | None,
    precision: str | None,
    threshold: float | None,
    verify: bool,
    threads: int,
    runtime: str | None = None,
) -> LoadedModel:
    if verify:
        verify_bundle(root)  # VerificationError (exit 6) on any modified file or failed parity
    m = read_manifest(root)
    file, prec = _pick_file(m, precision, root)
    if not verify:  # verify_bundle re-ran every file; else an INT8 file checked on another CPU class is re-checked
        check_isa(root, [file])
    sha = next(f.sha256 for f in m.files if f.name == file)
    t, t_src = _threshold(
        m.task,
        ("manifest.extra", m.extra),
        *((f"manifest.metrics.{k}", v) for k, v in m.metrics.items()),
        where="bundle",
        override=threshold,
    )
    inputs, outputs = onnx_io(root / file)
    reference, why = _bundle_reference(root, m)
    features = feature_tensor(root / file) if reference is not None and "features" in reference.spaces else None
    session = feature_session(root / file, features, threads=threads)
    runtime, runtime_src = _pick_runtime(m, runtime)
    runner: InferFn = lambda feeds: session.run(None, feeds)  # noqa: E731
    if runtime != "ort":
        onnx_file, file = file, _runtime_file(m, runtime, prec, root)
        sha = next(f.sha256 for f in m.files if f.name == file)
        runner = _runtime_runner(m, runtime, root / file, threads, session, features)
        runtime_src += f"; IO, OOD features from {onnx_file}"
    pre = _read_preprocess(root)
    scorer = OODScorer.load(reference, pre, where=f"{root.name}/drift_reference.npz")
    info = ModelInfo(
        name=name or safe_model_name(m.name),
        architecture=m.name,
        source=str(root),
        kind="bundle",
        file=file,
        precision=prec,
        sha256=sha,
        version=m.created,
        task=m.task,
        labels=tuple(m.label_names),
        threshold=t,
        threshold_source=t_src,
        verified=verify,
        intended_use=m.intended_use,
        ood_reference=scorer.description if scorer else f"none: {why}",
        runtime=runtime,
        runtime_source=runtime_src,
    )
    return LoadedModel(
        info, pre, inputs, outputs, runner, has_features=features is not None, ood=scorer, intended_use=m.intended_use
    )


def _bundle_reference(root: Path, m: Manifest) -> tuple[Reference | None, str]:
    """The bundle's OOD reference and, without one, why."""
    if m.ood is None:
        return None, "the bundle predates out-of-distribution references: re-export it"
    if not m.ood.get("available"):
        return None, str(m.ood.get("reason") or "not available")
    ref = read_reference(root)
    return (ref, "") if ref is not None else (None, "drift_reference.npz is missing or of another format")


def _load_model_dir(root: Path, *, name: str | None, threshold: float | None) -> LoadedModel:
    model, card = load_model_dir(root)
    t, t_src = _threshold(card.task, ("edgekd.json extra", card.extra), where="model directory", override=threshold)
    pre = card.preprocess
    h, w = pre.input_size
    inputs = [TensorInfo(name="input", shape=["batch", pre.in_chans, h, w], dtype="float32")]
    seg = card.task is Task.SEGMENTATION
    out_shape = ["batch", card.spec.num_classes, *((h, w) if seg else ())]
    outputs = [TensorInfo(name="logits", shape=out_shape, dtype="float32")]
    reference = read_reference(root)
    why = "the model directory holds no drift reference (pruned and imported models have none)"
    if reference is not None and reference.meta.get("weights_sha256") not in (None, sha256_file(root / WEIGHTS_FILE)):
        reference, why = None, "the drift reference was computed for other weights"
    scorer = OODScorer.load(reference, pre, where=f"{root.name}/drift_reference.npz")
    info = ModelInfo(
        name=name or safe_model_name(card.spec.name),
        architecture=card.spec.name,
        source=str(root),
        kind="model_dir",
        file=WEIGHTS_FILE,
        precision="fp32",
        sha256=sha256_file(root / WEIGHTS_FILE),
        version=card.lineage.created,
        task=card.task,
        labels=tuple(card.label_names),
        threshold=t,
        threshold_source=t_src,
        verified=False,
        intended_use=card.intended_use,
        ood_reference=scorer.description if scorer else f"none: {why}",
    )
    net = model.eval()
    classes = card.spec.num_classes

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(feeds["input"]))
        if seg:  # dense logits: no penultimate feature vector (the OOD score uses the image statistics)
            with torch.inference_mode():
                return [net(x).float().numpy()]
        logits, feats = logits_and_features(net, x, classes)
        return [logits.numpy().astype(np.float32), feats.double().numpy()]

    return LoadedModel(
        info, pre, inputs, outputs, run, has_features=not seg, ood=scorer, intended_use=card.intended_use
    )


def load_model(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    precision: str | None = None,
    threshold: float | None = None,
    verify: bool = True,
    threads: int = 0,
    runtime: str | None = None,
) -> LoadedModel:
    """Load a bundle (ONNX Runtime, OpenVINO or ExecuTorch) or a model directory (PyTorch) for inference.

    Args:
        path: a bundle written by ``edgekd export`` / ``edgekd quantize``, or a model directory.
        name: the name to serve and report it under (default: the architecture name, made URL-safe).
        precision: ``fp32``, ``fp16`` or ``int8``: which ONNX file of the bundle (default: its first).
        threshold: override the operating threshold of a binary task.
        verify: check the bundle's hashes and stored parity first (``False``: reported as unverified).
        threads: ONNX Runtime intra-op threads (0: its default, one per physical core); also OpenVINO's and
            ExecuTorch's (0: physical cores / ExecuTorch's pool as it is).
        runtime: ``ort``, ``openvino`` or ``executorch``: which runtime runs the bundle's file of ``precision``
            (default: the fastest at batch 1 that ``edgekd bench --record`` stored in the bundle, else ort).

    Raises:
        VerificationError: a modified or damaged bundle (exit 6).
        ArtifactError: not a bundle nor a model directory, or unreadable files (exit 4).
        InvalidInputError: an unknown precision or a bad threshold (exit 3).
    """
    root = Path(path)
    if precision is not None and precision not in ("fp32", "fp16", "int8"):
        raise InvalidInputError(f"unknown precision {precision!r}", "use fp32, fp16 or int8")
    if name is not None and safe_model_name(name) != name:
        raise InvalidInputError(
            f"model name {name!r} is not URL-safe", f"use letters, digits, '_', '.', '-': {safe_model_name(name)!r}"
        )
    if is_bundle(root):
        return _load_bundle(
            root, name=name, precision=precision, threshold=threshold, verify=verify, threads=threads, runtime=runtime
        )
    if root.is_dir() and is_model_dir(root):
        if precision not in (None, "fp32"):
            raise InvalidInputError(f"{root} is a model directory (fp32)", "export or quantize it to a bundle first")
        if runtime not in (None, "ort"):
            raise InvalidInputError(f"{root} is a model directory: it runs in PyTorch", "export it to a bundle first")
        return _load_model_dir(root, name=name, threshold=threshold)
    if not root.exists():
        raise ArtifactError(f"{root} does not exist", "pass a bundle directory or a model directory")
    raise ArtifactError(
        f"{root} is neither a bundle (manifest.json) nor a model directory (edgekd.json)",
        "bundles come from `edgekd export` or `edgekd quantize`",
    )
