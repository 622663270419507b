"""``export_bundle``: model directory -> verified, self-describing bundle (the library side of ``edgekd export``).

Every format is an entry of :data:`~edgekd.export.FORMATS`; this module only runs them. Order of work, chosen so
that a failure leaves nothing on disk: validate the :class:`~edgekd.export.ExportConfig` and check what the formats
need (TensorRT for ``engine``) first, then write the ONNX graphs in a scratch directory (each parity-checked), lint
them, write the other file formats (the engine), then write the bundle atomically with
:func:`~edgekd.export.write_bundle`. An output kind (``triton``, ``monai-bundle``) is written from a bundle: the
one given, or one exported from the model directory to a temporary folder first.

Example:
    >>> manifest = export_bundle("runs/student", "bundles/student", ExportConfig(formats=["onnx", "onnx-fp16"],
    ...                          check=["tensorrt"]))
    >>> [(f.name, f.precision) for f in manifest.model_files()]
    [('model.onnx', <Precision.FP32: 'fp32'>), ('model.fp16.onnx', <Precision.FP16: 'fp16'>)]
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from edgekd._config import build_config
from edgekd._io import check_output
from edgekd.errors import InvalidInputError, VerificationError
from edgekd.export._bundle import BundleFile, Reference, write_bundle
from edgekd.export._formats import FORMATS, ExportConfig, FileJob, FormatKind, OutputJob
from edgekd.export._lint import Finding, lint_errors, lint_onnx
from edgekd.export._manifest import MANIFEST_FILE, Manifest
from edgekd.export._ood import BundleCheck, validate_bundle_file, validation_data
from edgekd.export._parity import make_samples, torch_logits
from edgekd.modeldir import WEIGHTS_FILE, ModelCard, atomic_dir, load_model_dir, sha256_file
from edgekd.specs import current_command
from edgekd.students import count_macs, count_params

__all__ = ["export_bundle", "resolve_export_config", "REFERENCE_SAMPLES"]

REFERENCE_SAMPLES = 32  # stored in parity.npz for `edgekd verify`


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


def _load(model_dir: str | os.PathLike) -> tuple[nn.Module, ModelCard]:
    """The model and its card, with params and MACs filled in for the manifest and model card."""
    model, card = load_model_dir(model_dir)
    pre = card.preprocess
    updates = {"params": card.params or count_params(model)}
    if card.macs is None:
        updates["macs"] = count_macs(model, (1, pre.in_chans, *pre.input_size))
    return model, card.model_copy(update=updates)


def _validation(
    files: list[BundleFile],
    card: ModelCard,
    data: str | None,
    target_sensitivity: float | None,
    say: Callable[[str], None],
) -> BundleCheck:
    """OOD reference and operating point of the bundle's first ONNX file on the validation split."""
    primary = next((f for f in files if f.kind == "onnx"), None)
    if primary is None:
        return BundleCheck(None, None, {"available": False, "reason": "no ONNX file"})
    bundle, why = validation_data(card, data)
    check = validate_bundle_file(Path(primary.source), card, bundle, target_sensitivity=target_sensitivity, reason=why)
    if check.operating_point is not None:
        p = check.operating_point
        say(
            f"operating threshold {p['threshold']:.4g} (val sensitivity {p['sensitivity']:.3f} >= target "
            f"{p['target_sensitivity']:g}, specificity {p['specificity']:.3f})"
        )
    say(
        f"out-of-distribution reference: {', '.join(check.ood['spaces'])} ({check.ood['images']} val images)"
        if check.reference is not None
        else f"no out-of-distribution reference: {check.ood.get('reason')}"
    )
    return check


def resolve_export_config(cfg: ExportConfig | None = None, **options: Any) -> ExportConfig:
    """``cfg`` (default :class:`ExportConfig`) with ``options`` set over it, validated (one-line errors, exit 3)."""
    if not options:
        return cfg if cfg is not None else ExportConfig()
    base = cfg.model_dump(exclude_unset=True) if cfg is not None else {}
    return build_config(ExportConfig, None, {**base, **options})


def _write_files(job: FileJob) -> list[Finding]:
    """Run the ``file`` writers: the ONNX graphs (then the lint on them), then the others, each in table order."""
    asked = set(job.cfg.formats)
    todo = [f for f in FORMATS.values() if f.kind is FormatKind.FILE and (f.always or f.name in asked)]
    lint: list[Finding] = []
    for phase in ([f for f in todo if f.onnx], [f for f in todo if not f.onnx]):
        for fmt in phase:
            made = fmt.write(job)
            job.made += made
            if fmt.name in asked:
                job.shipped.update(f.name for f in made)
        if phase and phase[0].onnx:
            for p in job.parity:
                job.say(p.summary())
            if "tensorrt" in job.cfg.check:
                lint = _lint([f.source for f in job.onnx_files()], job.cfg.profile())
    return lint


def _files_bundle(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    cfg: ExportConfig,
    *,
    overwrite: bool,
    command: str | None,
    say: Callable[[str], None],
) -> Manifest:
    """A bundle of the ``file`` formats of ``cfg`` (see the module docstring for the order of work)."""
    model, card = _load(model_dir)
    samples = make_samples(card, cfg.data, n=cfg.n_samples)
    say(f"parity samples: {samples.source}")
    ref = torch_logits(model, samples.inputs)
    with tempfile.TemporaryDirectory(prefix="edgekd-export-") as tmp:
        job = FileJob(work=Path(tmp), model=model, card=card, cfg=cfg, samples=samples, ref=ref, say=say)
        lint = _write_files(job)
        shipped = [f for f in job.made if f.name in job.shipped]
        targets = [f.target for f in cfg.selected if f.target]
        target = targets[0] if targets else ("tensorrt" if "tensorrt" in cfg.check else "onnxruntime")
        extra: dict[str, Any] = {
            "source": str(model_dir),
            "source_sha256": sha256_file(Path(model_dir) / WEIGHTS_FILE),
            "command": command if command is not None else current_command(),
            "parity_samples": samples.source,
            "config": cfg.model_dump(mode="json"),  # the resolved ExportConfig (STYLE.md point 8)
            **job.extra,
        }
        check = _validation(shipped, card, cfg.data, cfg.target_sensitivity, say)
        if check.operating_point is not None:
            extra["operating_point"] = check.operating_point
        manifest = write_bundle(
            out,
            card=card,
            files=shipped,
            parity=job.parity,
            target=target,
            overwrite=overwrite,
            reference=Reference(samples.inputs[:REFERENCE_SAMPLES], ref[:REFERENCE_SAMPLES]),
            exporter=job.exporter,
            profile=cfg.profile(),
            lint=lint,
            extra=extra,
            versions=job.versions or None,
            ood_reference=check.reference,
            ood=check.ood,
        )
    say(f"bundle written: {out}")
    return manifest


def _output(
    source: str | os.PathLike,
    out: str | os.PathLike,
    cfg: ExportConfig,
    *,
    overwrite: bool,
    command: str | None,
    say: Callable[[str], None],
) -> Manifest:
    """An output kind (``cfg.output``): from the bundle given, or from one exported here to a temporary folder."""
    fmt = cfg.output
    if fmt is None:
        raise ValueError("_output needs an output kind")
    picked = [f for f in cfg.selected if f is not fmt]
    pick = picked[0] if picked else None
    if (Path(source) / MANIFEST_FILE).is_file():
        job = OutputJob(Path(source), Path(out), cfg, pick, source=None, overwrite=overwrite, say=say)
        return fmt.write(job)
    with tempfile.TemporaryDirectory(prefix=f"edgekd-{fmt.name}-") as tmp:
        bundle = Path(tmp) / "bundle"
        inner = cfg.model_copy(update={"formats": [pick.name] if pick else ["onnx"], "target_sensitivity": None})
        _files_bundle(source, bundle, inner, overwrite=False, command=command, say=say)
        job = OutputJob(bundle, Path(out), cfg, pick, source=str(source), overwrite=overwrite, say=say)
        return fmt.write(job)


def _extend(source: Path, out: Path, cfg: ExportConfig, *, overwrite: bool, say: Callable[[str], None]) -> Manifest:
    """A copy of the bundle ``source`` at ``out`` with the formats of ``cfg`` added (their ``extend`` writers)."""
    fmts = [f for f in cfg.selected if f.name != "onnx"]
    cannot = [f.name for f in fmts if f.extend is None]
    if cannot or not fmts:
        raise InvalidInputError(
            f"{source} is a bundle: --format {','.join(cannot) or 'onnx'} needs a model directory",
            "formats that can be added to a bundle: " + ", ".join(f.name for f in FORMATS.values() if f.extend),
        )
    with atomic_dir(out, overwrite=overwrite) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        for f in fmts:
            manifest = f.extend(tmp, cfg, say)
    say(f"bundle written: {out}")
    return manifest


def export_bundle(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    cfg: ExportConfig | None = None,
    *,
    overwrite: bool = False,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> Manifest:
    """Export a model directory to a verified bundle, or to the output kind ``cfg.formats`` names.

    Args:
        model_dir: a model directory (trained, distilled, pruned or quantization-aware); for ``triton`` and
            ``monai-bundle`` also a bundle.
        out: the bundle directory (written atomically; new, or an earlier edgekd output with ``overwrite``);
            for ``triton`` the model repository.
        cfg: the export settings (default :class:`~edgekd.export.ExportConfig`: FP32 ONNX only).
        overwrite: replace an earlier edgekd output at ``out`` (never other files, never ``model_dir``).
        command: the command line recorded in the manifest (default: this process's).
        log: called with one line per step (the CLI prints them).
        options: :class:`~edgekd.export.ExportConfig` fields set over ``cfg`` (``formats="onnx,onnx-fp16"``,
            ``n_samples=8``...); an unknown name is an error.

    Returns:
        The written :class:`~edgekd.export.Manifest` (for an output kind: the manifest its writer describes).

    Raises:
        VerificationError: failed parity or lint errors (no bundle is written).
        DependencyError: a format's requirement is missing (``engine`` without TensorRT or a GPU, ``monai-bundle``
            without MONAI), checked before any work.
        InvalidInputError, ArtifactError: bad options, a bad model directory or a failed export.
    """
    cfg = resolve_export_config(cfg, **options)
    say = log or (lambda _msg: None)
    fmt = cfg.output
    if fmt is None or fmt.owns_out:
        check_output(out, overwrite=overwrite, inputs=(model_dir,))
    for f in cfg.selected:
        if f.requires is not None:
            f.requires()
    if fmt is not None:
        return _output(model_dir, out, cfg, overwrite=overwrite, command=command, say=say)
    if (Path(model_dir) / MANIFEST_FILE).is_file():  # a bundle: add formats that can be made from one
        return _extend(Path(model_dir), Path(out), cfg, overwrite=overwrite, say=say)
    return _files_bundle(model_dir, out, cfg, overwrite=overwrite, command=command, say=say)
