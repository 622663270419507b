"""``export_bundle``: model directory -> verified, self-describing bundle (the library side of ``edgekd export``).

Order of work, chosen so that a failure leaves nothing on disk: check the request and TensorRT (for
``engine``) first, export and parity-check in a scratch directory, lint, build the engine, then write
the bundle atomically with :func:`~edgekd.export.write_bundle`.

Example:
    >>> manifest = export_bundle("runs/student", "bundles/student", formats=("onnx", "onnx-fp16"),
    ...                          check=("tensorrt",))
    >>> [(f.name, f.precision) for f in manifest.model_files()]
    [('model.onnx', <Precision.FP32: 'fp32'>), ('model.fp16.onnx', <Precision.FP16: 'fp16'>)]
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgekd._io import check_output
from edgekd.errors import InvalidInputError, VerificationError
from edgekd.export._bundle import MANIFEST_FILE, BundleFile, Manifest, Reference, write_bundle
from edgekd.export._fp16 import to_fp16
from edgekd.export._lint import Finding, lint_errors, lint_onnx
from edgekd.export._monai import export_monai_bundle
from edgekd.export._onnx import export_onnx
from edgekd.export._ood import BundleCheck, validate_bundle_file, validation_data
from edgekd.export._parity import ParityResult, Samples, make_samples, parity_check, torch_logits
from edgekd.export._tensorrt import build_engine, require_tensorrt, sidecar_path
from edgekd.export._triton import export_triton
from edgekd.export._types import Precision
from edgekd.modeldir import WEIGHTS_FILE, ModelCard, load_model_dir, sha256_file
from edgekd.specs import current_command
from edgekd.students import count_macs, count_params

__all__ = ["export_bundle", "parse_formats", "FORMATS", "CHECKS", "REFERENCE_SAMPLES"]

FORMATS = ("onnx", "onnx-fp16", "engine", "triton", "monai-bundle")
CHECKS = ("tensorrt",)
REFERENCE_SAMPLES = 32  # stored in parity.npz for `edgekd verify`
_FILE_NAMES = {"onnx": "model.onnx", "onnx-fp16": "model.fp16.onnx", "engine": "model.engine"}
_FORMAT_OF = {v: k for k, v in _FILE_NAMES.items()}


@dataclass(frozen=True)
class _Options:
    """The export and engine-build settings of one ``export_bundle`` call."""

    opset: int
    static: bool
    simplify: bool
    exporter: str
    min_batch: int
    opt_batch: int
    max_batch: int
    workspace_mb: int
    timing_cache: str | os.PathLike | None

    def profile(self) -> dict[str, int] | None:
        """The TensorRT optimization profile of a dynamic batch (``None`` for a static export)."""
        return None if self.static else {"min_batch": self.min_batch, "opt_batch": self.opt_batch,
                                         "max_batch": self.max_batch}  # fmt: skip


def _split(values: str | Sequence[str]) -> list[str]:
    items = values.split(",") if isinstance(values, str) else [p for v in values for p in str(v).split(",")]
    return list(dict.fromkeys(v.strip().lower() for v in items if v.strip()))


def parse_formats(formats: str | Sequence[str]) -> list[str]:
    """``"onnx,onnx-fp16"`` or a list -> validated, de-duplicated formats.

    Example:
        >>> parse_formats("onnx, engine")
        ['onnx', 'engine']
    """
    out = _split(formats)
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise InvalidInputError(f"unknown export format {bad[0] if bad else ''!r}", f"use {', '.join(FORMATS)}")
    return out


def _parse_checks(check: str | Sequence[str]) -> list[str]:
    out = _split(check)
    bad = [c for c in out if c not in CHECKS]
    if bad:
        raise InvalidInputError(f"unknown check {bad[0]!r}", f"use {', '.join(CHECKS)}")
    return out


def _require_parity(res: ParityResult) -> ParityResult:
    if not res.passed:
        raise VerificationError(res.summary(), "the exported graph does not reproduce the PyTorch model; try "
                                "--no-simplify or another --opset (EDGEKD_DEBUG=1 for details)")  # fmt: skip
    return res


def _parity(path: Path, card: ModelCard, samples: Samples, ref: np.ndarray, precision: Precision) -> ParityResult:
    res = parity_check(path, None, card, samples=samples.inputs, reference_logits=ref, precision=precision,
                       sample_source=samples.source)  # fmt: skip
    return _require_parity(res)


def _lint(paths: list[Path], profile: dict[str, int] | None) -> list[Finding]:
    findings = []
    for p in paths:
        for f in lint_onnx(p, target="tensorrt", profile=profile):
            findings.append(f.model_copy(update={"node": f"{p.name}: {f.node}"}))
    errors = lint_errors(findings)
    if errors:
        more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
        raise VerificationError(
            f"TensorRT lint found {len(errors)} error(s): {'; '.join(map(str, errors[:3]))}{more}",
            "fix the model or drop --check tensorrt; `edgekd lint-onnx FILE` lists every finding",
        )
    return findings


def _onnx_files(work: Path, model: nn.Module, card: ModelCard, formats: list[str], samples: Samples,
                ref: np.ndarray, opts: _Options) -> tuple[list[BundleFile], list[ParityResult], dict]:  # fmt: skip
    """Export, convert and parity-check the ONNX files in ``work``."""
    onnx_path = work / _FILE_NAMES["onnx"]
    info = export_onnx(model, card, onnx_path, opset=opts.opset, dynamic_batch=not opts.static,
                       simplify=opts.simplify, exporter=opts.exporter)  # fmt: skip
    # A fake-quantized model is an INT8 model: judged by top-1 agreement, not by FP32 logit error.
    base = Precision.INT8 if info["fake_quant"] else Precision.FP32
    files = [BundleFile(source=onnx_path, name=onnx_path.name, kind="onnx", precision=base)]
    parity = [_parity(onnx_path, card, samples, ref, base)]
    if "onnx-fp16" in formats:
        fp16 = work / _FILE_NAMES["onnx-fp16"]
        to_fp16(onnx_path, fp16)
        files.append(BundleFile(source=fp16, name=fp16.name, kind="onnx", precision=Precision.FP16))
        parity.append(_parity(fp16, card, samples, ref, Precision.FP16))
    return files, parity, info


def _engine_files(work: Path, onnx: BundleFile, opts: _Options) -> tuple[list[BundleFile], dict]:
    engine = work / _FILE_NAMES["engine"]
    meta = build_engine(onnx.source, engine, min_batch=opts.min_batch, opt_batch=opts.opt_batch,
                        max_batch=opts.max_batch, workspace_mb=opts.workspace_mb,
                        timing_cache=opts.timing_cache)  # fmt: skip
    files = [
        BundleFile(source=engine, name=engine.name, kind="engine", precision=onnx.precision),
        BundleFile(source=sidecar_path(engine), name=sidecar_path(engine).name, kind="engine-meta"),
    ]
    return files, meta


def _load(model_dir: str | os.PathLike) -> tuple[nn.Module, ModelCard]:
    """The model and its card, with params and MACs filled in for the manifest and model card."""
    model, card = load_model_dir(model_dir)
    pre = card.preprocess
    updates = {"params": card.params or count_params(model)}
    if card.macs is None:
        updates["macs"] = count_macs(model, (1, pre.in_chans, *pre.input_size))
    return model, card.model_copy(update=updates)


def _validation(files: list[BundleFile], card: ModelCard, data: str | None, target_sensitivity: float | None,
                say: Callable[[str], None]) -> BundleCheck:  # fmt: skip
    """OOD reference and operating point of the bundle's first ONNX file on the validation split."""
    primary = next((f for f in files if f.kind == "onnx"), None)
    if primary is None:
        return BundleCheck(None, None, {"available": False, "reason": "no ONNX file"})
    bundle, why = validation_data(card, data)
    check = validate_bundle_file(Path(primary.source), card, bundle, target_sensitivity=target_sensitivity,
                                 reason=why)  # fmt: skip
    if check.operating_point is not None:
        p = check.operating_point
        say(f"operating threshold {p['threshold']:.4g} (val sensitivity {p['sensitivity']:.3f} >= target "
            f"{p['target_sensitivity']:g}, specificity {p['specificity']:.3f})")  # fmt: skip
    say(f"out-of-distribution reference: {', '.join(check.ood['spaces'])} ({check.ood['images']} val images)"
        if check.reference is not None else f"no out-of-distribution reference: {check.ood.get('reason')}")  # fmt: skip
    return check


def _check_batches(min_batch: int, opt_batch: int, max_batch: int) -> None:
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise InvalidInputError(
            f"need 1 <= min-batch <= opt-batch <= max-batch, got {min_batch}/{opt_batch}/{max_batch}"
        )


def _export_triton(source: str | os.PathLike, out: str | os.PathLike, fmts: list[str], *, max_batch: int,
                   overwrite: bool, say: Callable[[str], None], **bundle_kw: Any) -> Manifest:  # fmt: skip
    """``--format triton``: a Triton model repository entry instead of a bundle (see ``edgekd.export._triton``).

    A bundle source goes in as it is (``onnx`` / ``onnx-fp16`` next to ``triton`` pick its FP32 / FP16 file,
    otherwise its first file: INT8 for a quantized bundle); a model directory is exported and
    parity-checked to a temporary bundle first.
    """
    rest = [f for f in fmts if f != "triton"]
    if "engine" in rest or len(rest) > 1:
        raise InvalidInputError(f"--format {','.join(fmts)}: a Triton export holds one ONNX model",
                                "use triton alone, or with onnx or onnx-fp16 to pick the precision")  # fmt: skip
    precision = {"onnx": "fp32", "onnx-fp16": "fp16"}[rest[0]] if rest else None
    if (Path(source) / MANIFEST_FILE).is_file():
        return export_triton(source, out, precision=precision, max_batch=max_batch, overwrite=overwrite, log=say)
    with tempfile.TemporaryDirectory(prefix="edgekd-triton-") as tmp:
        bundle = Path(tmp) / "bundle"
        export_bundle(source, bundle, formats=rest or ["onnx"], max_batch=max_batch, log=say, **bundle_kw)
        return export_triton(bundle, out, precision=precision or "fp32", max_batch=max_batch, overwrite=overwrite,
                             source=str(source), log=say)  # fmt: skip


def export_bundle(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    formats: str | Sequence[str] = ("onnx",),
    opset: int = 17,
    static: bool = False,
    simplify: bool = True,
    data: str | None = None,
    n_samples: int = 64,
    check: str | Sequence[str] = (),
    workspace_mb: int = 1024,
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 32,
    timing_cache: str | os.PathLike | None = None,
    exporter: str = "auto",
    overwrite: bool = False,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
    target_sensitivity: float | None = None,
) -> Manifest:
    """Export a model directory to a verified bundle.

    Args:
        model_dir: a model directory (trained, distilled, pruned or quantization-aware).
        out: the bundle directory (written atomically; new, or an earlier edgekd output with ``overwrite``).
        formats: any of ``onnx`` (FP32; always exported, shipped when listed), ``onnx-fp16``, ``engine``;
            or ``triton`` (a Triton model repository at ``out`` from a model directory or a bundle; see
            :func:`~edgekd.export.export_triton`; ``max_batch`` is its ``max_batch_size``); or ``monai-bundle``
            alone (a MONAI Bundle from a model directory or a bundle, checked with ``monai.bundle``; needs
            ``edgekd[monai]``).
        opset: ONNX opset.
        static: fix the batch dimension to 1 instead of a dynamic batch.
        simplify: clean the graph with onnxslim.
        data: data spec of the parity samples (default: the model's training data, else synthetic).
        n_samples: parity samples.
        check: ``("tensorrt",)`` runs the TensorRT lint on the ONNX files and fails on errors.
        workspace_mb, min_batch, opt_batch, max_batch, timing_cache: TensorRT engine build settings.
        exporter: ``auto``, ``torchscript`` or ``dynamo`` (see :func:`~edgekd.export.export_onnx`).
        overwrite: replace an earlier edgekd output at ``out`` (never other files, never ``model_dir``).
        command: the command line recorded in the manifest (default: this process's).
        log: called with one line per step (the CLI prints them).
        target_sensitivity: binary tasks: store the operating threshold reaching this sensitivity on the
            validation split (by the bundle's first ONNX file) in ``manifest.extra.operating_point``, which
            ``edgekd predict`` / ``serve`` then decide at. The out-of-distribution reference
            (``drift_reference.npz``) is computed on the same pass whenever the data loads.

    Returns:
        The written :class:`~edgekd.export.Manifest`.

    Raises:
        VerificationError: failed parity or lint errors (no bundle is written).
        DependencyError: ``engine`` without TensorRT or a GPU (checked before any work).
        InvalidInputError, ArtifactError: bad options, a bad model directory or a failed export.
    """
    say = log or (lambda _msg: None)
    if "monai-bundle" in _split(formats):  # a MONAI Bundle folder (see edgekd.export._monai)
        if parse_formats(formats) != ["monai-bundle"]:
            raise InvalidInputError("--format monai-bundle is exported alone", "run edgekd export once per format")
        return export_monai_bundle(model_dir, out, export=export_bundle, overwrite=overwrite, log=say, opset=opset,
                                   static=static, simplify=simplify, data=data, n_samples=n_samples, check=check,
                                   exporter=exporter, command=command)  # fmt: skip
    if "triton" in _split(formats):  # a model repository for Triton, from a bundle or a model directory
        return _export_triton(model_dir, out, parse_formats(formats), max_batch=max_batch, overwrite=overwrite,
                              say=say, opset=opset, static=static, simplify=simplify, data=data, n_samples=n_samples,
                              check=check, exporter=exporter, command=command)  # fmt: skip
    check_output(out, overwrite=overwrite, inputs=(model_dir,))
    fmts, checks = parse_formats(formats), _parse_checks(check)
    _check_batches(min_batch, opt_batch, max_batch)
    trt = require_tensorrt() if "engine" in fmts else None
    model, card = _load(model_dir)
    samples = make_samples(card, data, n=n_samples)
    say(f"parity samples: {samples.source}")
    ref = torch_logits(model, samples.inputs)
    opts = _Options(opset, static, simplify, exporter, min_batch, opt_batch, max_batch, workspace_mb, timing_cache)
    profile = opts.profile()
    with tempfile.TemporaryDirectory(prefix="edgekd-export-") as tmp:
        work = Path(tmp)
        files, parity, info = _onnx_files(work, model, card, fmts, samples, ref, opts)
        for p in parity:
            say(p.summary())
        lint = _lint([f.source for f in files], profile) if "tensorrt" in checks else []
        extra: dict[str, Any] = {
            "source": str(model_dir),
            "source_sha256": sha256_file(Path(model_dir) / WEIGHTS_FILE),
            "command": command if command is not None else current_command(),
            "parity_samples": samples.source,
        }
        # An engine ships with the ONNX it was built from: engines only run on one GPU and TensorRT version.
        built_from = files[-1] if trt is not None else None
        shipped = [f for f in files if f is built_from or _FORMAT_OF[f.name] in fmts]
        if trt is not None:
            say("building the TensorRT engine")
            engine_files, meta = _engine_files(work, files[-1], opts)
            shipped += engine_files
            extra["engine"] = meta
        target = "tensorrt" if trt is not None or "tensorrt" in checks else "onnxruntime"
        check = _validation(shipped, card, data, target_sensitivity, say)
        if check.operating_point is not None:
            extra["operating_point"] = check.operating_point
        manifest = write_bundle(
            out, card=card, files=shipped, parity=parity, target=target, overwrite=overwrite,
            reference=Reference(samples.inputs[:REFERENCE_SAMPLES], ref[:REFERENCE_SAMPLES]), exporter=info,
            profile=profile, lint=lint, extra=extra, versions={"tensorrt": trt.__version__} if trt else None,
            ood_reference=check.reference, ood=check.ood,
        )  # fmt: skip
    say(f"bundle written: {out}")
    return manifest
