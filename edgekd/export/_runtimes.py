"""What OpenVINO and ExecuTorch files share: parity of any runtime's logits and adding files to a bundle.

A runtime file (``model.xml`` + ``model.bin``, ``model.pte``) joins an existing bundle like its ONNX files:
a sha256 and precision in ``manifest["files"]``, a :class:`~edgekd.export.ParityResult` in
``manifest["parity"]`` measured against the bundle's stored PyTorch reference (``parity.npz``) with the same
tolerances as ONNX (:data:`~edgekd.export.TOLERANCES`), the runtime's version in ``manifest["versions"]`` and
its configuration and a usage example under ``manifest["extra"]["runtimes"][RUNTIME]``, which the model card
renders as a "How to run it with RUNTIME" section.

The bundle is rewritten atomically (a copy is built beside it and renamed into place), so a failed
conversion or parity check leaves the bundle as it was.

Example:
    >>> res = runtime_parity(lambda x, b: run(x), "model.xml", Precision.FP32, Task.MULTICLASS, x, ref)
    >>> manifest = extend_bundle("bundles/student", files, [res], runtime="openvino", info={...})
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import ArtifactError, VerificationError
from edgekd.export._bundle import MODEL_CARD_FILE, PARITY_FILE, BundleFile
from edgekd.export._manifest import MANIFEST_FILE, Manifest, ManifestFile, read_manifest
from edgekd.export._model_card import render_model_card
from edgekd.export._parity import Comparison, ParityResult, Tolerance
from edgekd.export._types import Precision
from edgekd.modeldir import ModelCard, atomic_dir, atomic_write_text, sha256_file, validate_file
from edgekd.specs import Task

__all__ = ["RunFn", "runtime_parity", "require_parity", "extend_bundle", "stored_reference", "bundle_card"]

RunFn = Callable[[np.ndarray, int], np.ndarray]  # (inputs, batch size) -> float32 logits, all inputs


def runtime_parity(
    run: RunFn,
    file: str,
    precision: Precision,
    task: Task,
    samples: np.ndarray,
    ref: np.ndarray,
    *,
    batch_sizes: Sequence[int] = (1, 7),
    tolerance: Tolerance | None = None,
    sample_source: str = "",
    reference: str = "reference logits",
    kernels: str = "native",
) -> ParityResult:
    """Parity of one runtime's outputs with reference logits, as :func:`~edgekd.export.parity_check` measures it.

    Args:
        run: runs all of ``samples`` in chunks of the given batch size and returns the logits.
        file: the file name recorded in the result.
        precision: the file's precision (picks the tolerance).
        task: the task (multi-label compares 0.5-sigmoid decisions, others the arg-max class).
        samples, ref: float32 inputs and their reference logits.
        batch_sizes: batch sizes to run.
        tolerance: override of the precision's tolerance.
        sample_source, reference, kernels: recorded in the result.
    """
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    ref = np.asarray(ref, dtype=np.float32)
    cmp = Comparison(task)
    sizes = sorted({int(b) for b in batch_sizes})
    for b in sizes:
        out = np.asarray(run(samples, b), dtype=np.float32)
        if out.shape != ref.shape:
            raise VerificationError(f"{file}: output shape {out.shape} differs from the reference {ref.shape}")
        cmp.add(out, ref)
    return cmp.result(
        file=file,
        precision=Precision(precision),
        n=len(samples),
        batch_sizes=sizes,
        ref=ref,
        tolerance=tolerance,
        sample_source=sample_source,
        reference=reference,
        kernels=kernels,
    )


def require_parity(res: ParityResult, runtime: str) -> ParityResult:
    """``res`` when it passed, else the :class:`~edgekd.errors.VerificationError` (exit 6) naming the runtime."""
    if not res.passed:
        raise VerificationError(
            f"{runtime}: {res.summary()}",
            f"the {runtime} file does not reproduce the PyTorch model; nothing was added to the bundle",
        )
    return res


def stored_reference(bundle: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's stored parity inputs and PyTorch logits (``parity.npz``)."""
    path = Path(bundle) / PARITY_FILE
    if not path.is_file():
        raise ArtifactError(f"bundle {bundle} stores no {PARITY_FILE}", "re-export it with `edgekd export`")
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["inputs"], z["logits"]
    except (KeyError, ValueError, OSError, EOFError) as e:
        raise ArtifactError(f"{path} is unreadable: {e}", "re-export the bundle") from e


def bundle_card(bundle: str | os.PathLike, manifest: Manifest | None = None) -> ModelCard:
    """The model card a bundle's manifest describes (spec, task, labels, preprocessing, lineage)."""
    root = Path(bundle)
    m = manifest or read_manifest(root)
    fields = {
        "spec": m.spec,
        "task": m.task,
        "label_names": m.label_names,
        "preprocess": m.preprocess,
        "lineage": m.lineage,
    }
    return validate_file(ModelCard, fields, root / MANIFEST_FILE, "re-export the bundle")


def _entry(path: Path, kind: str, precision: Precision | None) -> ManifestFile:
    return ManifestFile(
        name=path.name, sha256=sha256_file(path), kind=kind, precision=precision, bytes=path.stat().st_size
    )


def extend_bundle(
    bundle: str | os.PathLike,
    files: list[BundleFile],
    parity: list[ParityResult],
    *,
    runtime: str,
    info: dict[str, Any],
    versions: dict[str, str],
) -> Manifest:
    """Add runtime files to a bundle atomically: hashes, parity, versions, ``extra.runtimes`` and the model card.

    Files of the same names from an earlier run are replaced (with their parity results), so adding a
    runtime twice gives the same bundle.

    Raises:
        ArtifactError: not a bundle, or a new file name clashes with a file of another kind.
    """
    root = Path(bundle)
    m = read_manifest(root)
    card = bundle_card(root, m)
    new = {f.name for f in files}
    for old in m.files:
        if old.name in new and old.kind not in {f.kind for f in files if f.name == old.name}:
            raise ArtifactError(f"{root} already has a {old.kind} file named {old.name}", "export to a new bundle")
    with atomic_dir(root, overwrite=True) as tmp:
        kept = [f for f in m.files if f.name not in new and f.kind != "model-card"]
        for f in kept:
            shutil.copyfile(root / f.name, tmp / f.name)
        for f in files:
            shutil.copyfile(f.source, tmp / f.name)
        m.files = kept + [_entry(tmp / f.name, f.kind, f.precision) for f in files]
        m.parity = [p for p in m.parity if p.file not in new] + list(parity)
        m.versions = {**m.versions, **versions}
        m.extra = {**m.extra, "runtimes": {**m.extra.get("runtimes", {}), runtime: info}}
        (tmp / MODEL_CARD_FILE).write_text(render_model_card(m, card))
        m.files.append(_entry(tmp / MODEL_CARD_FILE, "model-card", None))
        atomic_write_text(tmp / MANIFEST_FILE, m.model_dump_json(indent=2) + "\n")
    return m
