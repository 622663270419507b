"""A Triton Inference Server model repository from a bundle (``edgekd export --format triton``).

One model per export, written atomically as ``REPOSITORY/NAME/``::

    NAME/config.pbtxt      platform onnxruntime_onnx, input/output names, data types and dims (without the
                           batch dim), max_batch_size and dynamic batching
    NAME/1/model.onnx      the bundle's ONNX file (FP32, FP16 or INT8), renamed as Triton expects
    NAME/labels.txt        class names, one a line, in logit order (``label_filename`` of the output:
                           Triton's classification extension reports them)
    NAME/preprocess.json   the preprocessing recipe the client must apply before sending a tensor
    NAME/MODEL_CARD.md     the bundle's model card (and labels.json, as in the bundle)
    NAME/edgekd-triton.json  what was exported from which bundle (sha256s); marks the folder as edgekd's

The source bundle is verified first (hashes and stored parity). A model exported with a static batch gets
``max_batch_size: 0`` and full dims; a dynamic one gets ``max_batch_size`` and ``dynamic_batching``.
``config.pbtxt`` is written by hand and, when ``tritonclient[grpc]`` is installed, parsed back with Triton's
own ``model_config`` protobuf to check it.

Run it with ``tritonserver --model-repository=REPOSITORY`` (see the README for Docker and KServe).

Example:
    >>> manifest = export_triton("bundles/student-int8", "triton_repo", max_batch=32)
    >>> manifest.extra["triton"]["config"]
    'triton_repo/small_resnet8x4/config.pbtxt'
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.export._bundle import LABELS_FILE, MODEL_CARD_FILE, PREPROCESS_FILE
from edgekd.export._manifest import MANIFEST_FILE, Manifest, read_manifest
from edgekd.export._types import TensorInfo, onnx_io
from edgekd.export._verify import verify_bundle
from edgekd.modeldir import atomic_dir, sha256_file

__all__ = ["export_triton", "triton_config", "parse_triton_config", "safe_model_name", "TRITON_DTYPES"]

TRITON_DTYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
}
LABELS_TXT = "labels.txt"
PROVENANCE_FILE = "edgekd-triton.json"  # what was exported from where; marks the folder as edgekd's output
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_model_name(raw: str) -> str:
    """A model name usable as a directory name and in a URL path: ``small:tinycnn`` -> ``small_tinycnn``."""
    return _UNSAFE.sub("_", raw).strip("._-") or "model"


def _dims(info: TensorInfo, batched: bool) -> list[int]:
    dims = info.shape[1:] if batched else info.shape
    return [d if isinstance(d, int) and d > 0 else -1 for d in dims]


def _tensor(info: TensorInfo, batched: bool, labels: bool = False) -> str:
    dtype = TRITON_DTYPES.get(info.dtype)
    if dtype is None:
        raise InvalidInputError(f"tensor {info.name!r} has type {info.dtype}, which Triton configs cannot express")
    label = f'\n    label_filename: "{LABELS_TXT}"' if labels else ""
    dims = ", ".join(map(str, _dims(info, batched)))
    return f'  {{\n    name: "{info.name}"\n    data_type: {dtype}\n    dims: [ {dims} ]{label}\n  }}'


def _batched(inputs: list[TensorInfo]) -> bool:
    """Every input has a symbolic (dynamic) first dimension."""
    return all(t.shape and not (isinstance(t.shape[0], int) and t.shape[0] > 0) for t in inputs)


BACKENDS = ("onnxruntime", "openvino")  # Triton backends a bundle's file is exported for


def _openvino_parameters(threads: int) -> list[str]:
    """The OpenVINO backend's parameters: one stream, latency hint, ``threads`` threads (as edgekd bench runs it)."""
    values = {"NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(threads)}
    return [f'parameters: {{\n  key: "{k}"\n  value: {{ string_value: "{v}" }}\n}}' for k, v in values.items()]


def triton_config(
    name: str,
    inputs: list[TensorInfo],
    outputs: list[TensorInfo],
    *,
    max_batch: int,
    max_queue_delay_us: int = 5000,
    backend: str = "onnxruntime",
    threads: int = 2,
) -> str:
    """The ``config.pbtxt`` text of a model for Triton's ONNX Runtime (``platform: onnxruntime_onnx``) or OpenVINO
    backend (``backend: "openvino"``, with its ``NUM_STREAMS``, ``PERFORMANCE_HINT``, ``INFERENCE_NUM_THREADS``
    parameters).

    A dynamic batch dimension (symbolic first dim of every input) gives ``max_batch_size: max_batch``, dims
    without the batch and ``dynamic_batching``; a static one gives ``max_batch_size: 0`` and full dims.
    """
    if max_batch < 1:
        raise InvalidInputError(f"max batch must be >= 1, got {max_batch}")
    if backend not in BACKENDS:
        raise InvalidInputError(f"unknown Triton backend {backend!r}", f"use {', '.join(BACKENDS)}")
    batched = _batched(inputs)
    head = (
        ['platform: "onnxruntime_onnx"', 'backend: "onnxruntime"']
        if backend == "onnxruntime"
        else ['backend: "openvino"']
    )
    lines = [
        f'name: "{name}"',
        *head,
        f"max_batch_size: {max_batch if batched else 0}",
        "version_policy: { latest: { num_versions: 1 } }",
        "input [\n" + ",\n".join(_tensor(t, batched) for t in inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor(t, batched, labels=i == 0) for i, t in enumerate(outputs)) + "\n]",
    ]
    if batched:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}")
    if backend == "openvino":
        lines += _openvino_parameters(threads)
    return "\n".join(lines) + "\n"


def parse_triton_config(text: str) -> Any | None:
    """Parse ``config.pbtxt`` with Triton's ``ModelConfig`` protobuf; ``None`` without ``tritonclient[grpc]``.

    Raises:
        InvalidInputError: the text is not a valid Triton model configuration.
    """
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError):  # tritonclient raises RuntimeError when installed without grpc
        return None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise InvalidInputError(f"invalid Triton config.pbtxt: {e}") from e


def _pick(m: Manifest, precision: str | None, bundle: Path, kind: str = "onnx") -> str:
    onnx_files = [f for f in m.model_files() if f.kind == kind]
    if not onnx_files:
        hint = "add one: edgekd export BUNDLE --format openvino" if kind == "openvino" else "re-export it"
        raise ArtifactError(f"bundle {bundle} has no {kind} file for this Triton backend", hint)
    if precision is None:
        return onnx_files[0].name
    for f in onnx_files:
        if (f.precision.value if f.precision else "fp32") == precision:
            return f.name
    have = ", ".join(sorted((f.precision.value if f.precision else "fp32") for f in onnx_files))
    raise InvalidInputError(
        f"bundle {bundle} has no {precision} {'ONNX' if kind == 'onnx' else kind} file", f"it has: {have}"
    )


def _check_target(repo: Path, target: Path, overwrite: bool) -> None:
    if repo.exists() and not repo.is_dir():
        raise InvalidInputError(f"--out {repo} is a file; a Triton model repository is a folder")
    if not target.exists():
        return
    if not overwrite:
        raise InvalidInputError(f"{target} already exists", "pass --overwrite to replace it, or choose another --out")
    if not (target / PROVENANCE_FILE).is_file():
        raise InvalidInputError(
            f"{target} was not written by edgekd; --overwrite only replaces edgekd outputs",
            "choose another --out or model name",
        )


def export_triton(
    bundle: str | os.PathLike,
    out: str | os.PathLike,
    *,
    name: str | None = None,
    precision: str | None = None,
    max_batch: int = 32,
    max_queue_delay_us: int = 5000,
    verify: bool = True,
    overwrite: bool = False,
    source: str | None = None,
    log: Callable[[str], None] | None = None,
    backend: str = "onnxruntime",
    threads: int = 2,
) -> Manifest:
    """Write ``out/NAME/`` (a Triton model repository entry) from one model file of a bundle.

    Args:
        bundle: a bundle from ``edgekd export`` or ``edgekd quantize`` (FP32, FP16 or INT8 files).
        out: the model repository (created if missing; other models in it are left alone).
        name: the Triton model name (default: the bundle's model name, made directory-safe).
        precision: ``fp32``, ``fp16`` or ``int8`` (default: the bundle's first model file).
        max_batch: ``max_batch_size`` of a dynamic-batch model.
        max_queue_delay_us: dynamic batching's ``max_queue_delay_microseconds``.
        verify: verify the bundle first.
        overwrite: replace an earlier ``out/NAME`` written by edgekd (never other folders).
        source: what to record as the source (default: ``bundle``).
        log: called with one line per step.
        backend: ``onnxruntime`` (``1/model.onnx``) or ``openvino`` (the bundle's OpenVINO IR as ``1/model.xml`` +
            ``1/model.bin``, ``backend: "openvino"``).
        threads: the OpenVINO backend's ``INFERENCE_NUM_THREADS``.

    Returns:
        The bundle's manifest narrowed to the exported file, with ``target="triton"`` and the repository
        details in ``extra["triton"]``.

    Raises:
        VerificationError: the bundle fails verification (exit 6); ArtifactError: not a bundle (exit 4);
        InvalidInputError: bad name, precision or batch, or ``out/NAME`` exists without ``overwrite`` (exit 3).
    """
    say = log or (lambda _msg: None)
    root, repo = Path(bundle), Path(out)
    m = read_manifest(root)
    name = name or safe_model_name(m.name)
    if safe_model_name(name) != name:
        raise InvalidInputError(f"Triton model name {name!r} is not directory-safe", f"use {safe_model_name(name)!r}")
    target = repo / name
    _check_target(repo, target, overwrite)
    if verify:
        verify_bundle(root)
        say(f"bundle {root} verified")
    kind = "openvino" if backend == "openvino" else "onnx"
    file = _pick(m, precision, root, kind)
    entry = next(f for f in m.files if f.name == file)
    io_file = _pick(m, entry.precision.value if entry.precision else "fp32", root) if kind == "openvino" else file
    inputs, outputs = onnx_io(root / io_file)  # an IR is converted from the ONNX file of its precision: same IO
    text = triton_config(
        name,
        inputs,
        outputs,
        max_batch=max_batch,
        max_queue_delay_us=max_queue_delay_us,
        backend=backend,
        threads=threads,
    )
    parsed = parse_triton_config(text)
    info = {
        "repository": str(repo),
        "model": name,
        "path": str(target),
        "config": str(target / "config.pbtxt"),
        "file": file,
        "backend": backend,
        "precision": entry.precision.value if entry.precision else "fp32",
        "sha256": entry.sha256,
        "max_batch_size": max_batch if _batched(inputs) else 0,
        "source": source or str(root),
        "source_manifest_sha256": sha256_file(root / MANIFEST_FILE),
        "validated_with": "tritonclient model_config protobuf"
        if parsed is not None
        else "not parsed (tritonclient[grpc] is not installed)",
    }
    with atomic_dir(target, overwrite=True) as tmp:  # existence and ownership were checked above
        (tmp / "1").mkdir()
        if kind == "openvino":  # the backend's default model file name is model.xml (+ model.bin beside it)
            shutil.copyfile(root / file, tmp / "1" / "model.xml")
            shutil.copyfile((root / file).with_suffix(".bin"), tmp / "1" / "model.bin")
        else:
            shutil.copyfile(root / file, tmp / "1" / "model.onnx")
        (tmp / "config.pbtxt").write_text(text)
        (tmp / LABELS_TXT).write_text("".join(f"{label}\n" for label in m.label_names))
        for extra in (PREPROCESS_FILE, MODEL_CARD_FILE, LABELS_FILE):
            if (root / extra).is_file():
                shutil.copyfile(root / extra, tmp / extra)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(info, indent=2) + "\n")
    say(f"Triton model {name} ({info['precision']}) written to {target}")
    return m.model_copy(update={"files": [entry], "target": "triton", "extra": {**m.extra, "triton": info}})
