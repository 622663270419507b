"""``edgekd verify``: re-check a bundle on the receiving side, without the PyTorch model.

1. Every file listed in ``manifest.json`` exists and has the recorded sha256 and size.
2. Every ONNX file re-runs on the stored reference inputs (``parity.npz``) in ONNX Runtime and must
   match the stored PyTorch logits within its precision's tolerance, at batch sizes 1 and 7 (or its
   static batch). Engines are re-run too when TensorRT and a GPU are present.
3. With ``data``, every ONNX file also runs on real samples of that data against the FP32 ONNX file.

INT8 files depend on the CPU's instruction set (:mod:`edgekd._cpu`): the manifest records the class an INT8
file was checked on (``manifest.isa``). When parity fails on a CPU of another class the error says so and names
the target to rebuild for. :func:`check_isa` is the same check for consumers that only load the bundle
(`edgekd bench`, `predict`, `serve`): on a CPU of another class than the recorded one it re-runs the stored
parity samples of the INT8 files that will run, and refuses them when they fail.

Example:
    >>> res = verify_bundle("bundles/student")
    >>> res.ok, [p.file for p in res.parity]
    (True, ['model.onnx', 'model.fp16.onnx'])
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from edgekd._cpu import cpu_isa, native_target
from edgekd.errors import ArtifactError, VerificationError
from edgekd.export._bundle import PARITY_FILE
from edgekd.export._executorch import verify_executorch
from edgekd.export._manifest import MANIFEST_FILE, Manifest, read_manifest
from edgekd.export._openvino import verify_openvino
from edgekd.export._parity import (
    SEG_TOLERANCES,
    ParityResult,
    Tolerance,
    make_samples,
    mask_dice,
    ort_session,
    parity_check,
    run_onnx,
)
from edgekd.export._tensorrt import run_engine, tensorrt_available
from edgekd.export._types import Precision
from edgekd.modeldir import ModelCard, sha256_file, validate_file
from edgekd.specs import Task

__all__ = ["FileCheck", "VerifyResult", "verify_bundle", "verify_hashes", "check_isa"]


class FileCheck(BaseModel):
    """The hash check of one file."""

    name: str
    ok: bool
    reason: str = ""


class VerifyResult(BaseModel):
    """Everything ``verify_bundle`` checked."""

    bundle: str
    ok: bool
    files: list[FileCheck] = Field(default_factory=list)
    parity: list[ParityResult] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)
    unlisted: list[str] = Field(default_factory=list)

    def problems(self) -> list[str]:
        """One line per failed check."""
        bad = [f"{f.name}: {f.reason}" for f in self.files if not f.ok]
        return bad + [p.summary() for p in self.parity if not p.passed]


def _check_file(root: Path, name: str, sha256: str, size: int) -> FileCheck:
    path = root / name
    if not path.is_file():
        return FileCheck(name=name, ok=False, reason="missing")
    if path.stat().st_size != size:
        return FileCheck(name=name, ok=False, reason=f"size {path.stat().st_size} != {size} recorded (modified)")
    if sha256_file(path) != sha256:
        return FileCheck(name=name, ok=False, reason="sha256 differs from the manifest (modified)")
    return FileCheck(name=name, ok=True)


def _card_of(m: Manifest, root: Path) -> ModelCard:
    # An invalid spec or preprocess in the manifest is a damaged bundle: one line naming the field (exit 4).
    return validate_file(
        ModelCard,
        {
            "spec": m.spec,
            "task": m.task,
            "label_names": m.label_names,
            "preprocess": m.preprocess,
            "lineage": m.lineage,
        },
        root / MANIFEST_FILE,
        "re-export the bundle",
    )


# Model files run in another runtime: (path, precision, task, inputs, reference, results) -> why not run, or None.
RUNTIME_PARITY = {"openvino": verify_openvino, "executorch": verify_executorch}


def _load_reference(root: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(root / PARITY_FILE, allow_pickle=False) as z:
            return z["inputs"], z["logits"]
    except KeyError as e:
        raise ArtifactError(f"{root / PARITY_FILE} is malformed: it has no array {e}", "re-export the bundle") from e
    except (EOFError, zipfile.BadZipFile, zlib.error, ValueError, OSError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if isinstance(e, EOFError):
            reason = "the file is empty or truncated"
        raise ArtifactError(f"{root / PARITY_FILE} is unreadable: {reason}", "re-export the bundle") from e


def _stored_parity(root: Path, m: Manifest, res: VerifyResult) -> None:
    if not any(f.name == PARITY_FILE for f in m.files):
        res.skipped.append("parity: the bundle stores no reference outputs (parity.npz)")
        return
    x, ref = _load_reference(root)
    card = _card_of(m, root)
    for f in m.model_files():
        precision = f.precision or Precision.FP32
        if f.kind == "onnx":
            r = parity_check(
                root / f.name,
                None,
                card,
                samples=x,
                reference_logits=ref,
                precision=precision,
                sample_source=f"{PARITY_FILE} ({len(x)} stored samples)",
            )
            res.parity.append(r)
        elif f.kind in RUNTIME_PARITY:  # OpenVINO IR, ExecuTorch programs: re-run in their runtime when installed
            why = RUNTIME_PARITY[f.kind](root / f.name, precision, m.task, x, ref, res.parity)
            if why:
                res.skipped.append(f"{f.name}: not run ({why}); hash checked")
        else:
            _engine_parity(root / f.name, x, ref, precision, res, m.task)


def _engine_parity(
    path: Path, x: np.ndarray, ref: np.ndarray, precision: Precision, res: VerifyResult, task: Task = Task.MULTICLASS
) -> None:

    if not tensorrt_available():
        res.skipped.append(f"{path.name}: not run (needs TensorRT and a CUDA GPU); hash checked")
        return
    out = np.concatenate([run_engine(path, x[i : i + 1]) for i in range(len(x))])
    diff = np.abs(out - ref)
    top1 = float((out.argmax(1) == ref.argmax(1)).mean())
    # TensorRT may use TF32 for FP32 layers: engines are judged by top-1 agreement, the error is reported; a
    # segmenter's engine by pixel agreement and mask Dice, like its ONNX files (not run here without a GPU)
    seg = task is Task.SEGMENTATION
    dice = mask_dice(out, ref) if seg else None
    tol = Tolerance(min_top1=0.99, min_dice=SEG_TOLERANCES[Precision.FP16].min_dice if seg else None)
    res.parity.append(
        ParityResult(
            file=path.name,
            precision=precision,
            n=len(x),
            batch_sizes=[1],
            max_abs=float(diff.max()),
            max_rel=float(diff.max()) / (float(np.abs(ref).max()) or 1.0),
            mean_abs=float(diff.mean()),
            top1_agreement=top1,
            tolerance=tol,
            passed=top1 >= 0.99 and (dice is None or dice >= (tol.min_dice or 0.0)),
            samples=PARITY_FILE,
            reference="stored logits",
            mask_dice=dice,
        )
    )


def _data_parity(root: Path, m: Manifest, data: str, res: VerifyResult) -> None:
    onnx_files = [f for f in m.model_files() if f.kind == "onnx"]
    fp32 = next((f for f in onnx_files if f.precision in (None, Precision.FP32)), None)
    if fp32 is None:
        res.skipped.append("data parity: no FP32 ONNX file to compare against")
        return
    card = _card_of(m, root)
    samples = make_samples(card, data)
    ref = run_onnx(ort_session(root / fp32.name), samples.inputs, 16)
    for f in onnx_files:
        if f is not fp32:
            res.parity.append(
                parity_check(
                    root / f.name,
                    None,
                    card,
                    samples=samples.inputs,
                    reference_logits=ref,
                    precision=f.precision or Precision.FP32,
                    sample_source=f"{samples.source} vs {fp32.name}",
                )
            )


def verify_bundle(path: str | os.PathLike, *, data: str | None = None) -> VerifyResult:
    """Re-hash every file of a bundle and re-run parity from its stored reference outputs.

    Args:
        path: the bundle directory.
        data: optionally, a data spec: lower-precision ONNX files are also compared with the FP32 one
            on real samples of it.

    Returns:
        A :class:`VerifyResult` with ``ok=True``.

    Raises:
        VerificationError: a missing or modified file, or a failed parity check (the message lists them).
        ArtifactError: not a bundle, or a malformed manifest.
    """
    root = Path(path)
    m = read_manifest(root)
    res = _hashes(root, m)
    if all(f.ok for f in res.files):
        _stored_parity(root, m, res)
        if data:
            _data_parity(root, m, data, res)
    else:
        res.skipped.append("parity: not run because files failed their hash check")
    return _finish(res, m)


def _hashes(root: Path, m: Manifest) -> VerifyResult:
    res = VerifyResult(bundle=str(root), ok=False)
    res.files = [_check_file(root, f.name, f.sha256, f.bytes) for f in m.files]
    listed = {f.name for f in m.files} | {MANIFEST_FILE}
    res.unlisted = sorted(p.name for p in root.iterdir() if p.name not in listed)
    return res


def _isa_error(m: Manifest, failed: list[ParityResult], where: str) -> VerificationError | None:
    """The error when only INT8 files fail and this CPU is not the class they were checked on (else None)."""
    rec, here = m.isa or {}, cpu_isa().isa
    if not failed or any(p.precision is not Precision.INT8 or p.kernels != "native" for p in failed):
        return None
    if rec.get("verified_isa") == here:
        return None
    checked = rec.get("verified_isa") or ("reference kernels" if rec else "a CPU it does not record")
    scores = ", ".join(f"{p.file} top-1 {p.top1_agreement:.3f}" for p in failed)
    own = native_target(here)
    return VerificationError(
        f"{where}: its INT8 file was checked on {checked} (target {rec.get('target', m.target)}); on this {here} "
        f"CPU its stored parity samples fail ({scores} < {failed[0].tolerance.min_top1}): this CPU's INT8 kernels "
        "compute differently",
        f"rebuild it for this CPU: edgekd quantize MODEL_DIR --target {own}"
        if own
        else "run it on the class of device it was built for",
    )


def _finish(res: VerifyResult, m: Manifest | None = None) -> VerifyResult:
    res.ok = not res.problems()
    if not res.ok:
        problems = res.problems()
        failed = [p for p in res.parity if not p.passed]
        if m is not None and all(f.ok for f in res.files) and (err := _isa_error(m, failed, f"bundle {res.bundle}")):
            raise err
        raise VerificationError(
            f"bundle {res.bundle} failed verification: {'; '.join(problems[:3])}"
            + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""),
            "the bundle was modified or damaged after export; re-export it",
        )
    return res


def check_isa(path: str | os.PathLike, files: list[str] | None = None) -> str | None:
    """Re-check the INT8 ONNX files of a bundle on this CPU when it is of another class than the recorded one.

    Args:
        path: the bundle directory.
        files: the file names that will run (default: every INT8 ONNX file of the bundle).

    Returns:
        None when there is nothing to re-check (no INT8 file, or checked on this CPU's class), else one line
        saying what was re-checked and that it passed.

    Raises:
        VerificationError: an INT8 file fails its stored parity samples on this CPU (exit 6), naming the
            target to rebuild for.
        ArtifactError: not a bundle, or a malformed manifest or parity file (exit 4).
    """
    root = Path(path)
    m = read_manifest(root)
    here = cpu_isa().isa
    int8 = [
        f
        for f in m.model_files()
        if f.kind == "onnx" and f.precision is Precision.INT8 and (files is None or f.name in files)
    ]
    if not int8 or (m.isa or {}).get("verified_isa") == here:
        return None
    if not any(f.name == PARITY_FILE for f in m.files):
        return f"{', '.join(f.name for f in int8)}: not re-checked on this {here} CPU (the bundle stores no parity.npz)"
    x, ref = _load_reference(root)
    card = _card_of(m, root)
    results = [
        parity_check(
            root / f.name,
            None,
            card,
            samples=x,
            reference_logits=ref,
            precision=Precision.INT8,
            sample_source=f"{PARITY_FILE} ({len(x)} stored samples)",
        )
        for f in int8
    ]
    failed = [r for r in results if not r.passed]
    if failed:
        raise _isa_error(m, failed, f"bundle {root}") or VerificationError(
            f"bundle {root}: {failed[0].summary()}", "re-export the bundle"
        )
    checked = (m.isa or {}).get("verified_isa") or "reference kernels"
    return (
        f"{', '.join(r.file for r in results)}: checked on {checked}, re-checked on this {here} CPU: "
        f"parity passed (top-1 {min(r.top1_agreement for r in results):.3f})"
    )


def verify_hashes(path: str | os.PathLike) -> VerifyResult:
    """Re-hash every file of a bundle against its manifest (what a consumer checks before loading it).

    Raises:
        VerificationError: a missing or modified file (exit 6).
        ArtifactError: not a bundle, or a malformed manifest (exit 4).
    """
    root = Path(path)
    return _finish(_hashes(root, read_manifest(root)))
