"""edgekd.export: ONNX export with parity checks, FP16, TensorRT engines, a compatibility lint, bundles.

The artifact is what leaves the team, so every step is checked:

* :func:`export_onnx` picks the exporter per model (TorchScript for fake-quantized models and opsets
  below 18, dynamo otherwise when ``onnxscript`` is installed), names the IO ``input``/``logits``, makes
  the batch dynamic, runs onnxslim and ``onnx.checker``;
* :func:`parity_check` compares ONNX Runtime with PyTorch on real (or synthetic) samples at batch sizes
  1 and 7 (FP32: max abs error <= 1e-4; FP16/INT8: top-1 agreement >= 99 %);
* :func:`to_fp16` writes an FP16 model with FP32 inputs and outputs;
* :func:`lint_onnx` checks TensorRT compatibility without a GPU; :func:`build_engine` builds an engine;
* :func:`write_bundle` / :func:`export_bundle` write the bundle atomically and :func:`verify_bundle`
  re-checks it on the receiving side;
* :func:`export_triton` writes a Triton model repository entry (``config.pbtxt``, ``1/model.onnx``, labels)
  from a bundle;
* :func:`export_monai_bundle` (``--format monai-bundle``) writes a MONAI Bundle checked with ``monai.bundle``;
* :data:`FORMATS` is the one table of export formats (each a file inside the bundle or an output kind, with its
  writer) and :class:`ExportConfig` the one typed config of `edgekd export`.

Example:
    >>> manifest = export_bundle("runs/student", "bundles/student", ExportConfig(formats=["onnx", "onnx-fp16"]))
    >>> verify_bundle("bundles/student").ok
    True
"""

from edgekd.export._bundle import (
    LABELS_FILE,
    MODEL_CARD_FILE,
    PARITY_FILE,
    PREPROCESS_FILE,
    BundleFile,
    Reference,
    preprocess_recipe,
    write_bundle,
)
from edgekd.export._executorch import (
    EXECUTORCH_EXTRA,
    add_executorch,
    et_threads,
    executorch_version,
    export_pte,
    load_pte,
    require_executorch,
    run_pte,
    set_et_threads,
)
from edgekd.export._export import export_bundle, resolve_export_config
from edgekd.export._formats import (
    CHECKS,
    DEFAULT_TIMING_CACHE,
    FORMATS,
    ExportConfig,
    ExportFormat,
    FileJob,
    FormatKind,
    OutputJob,
    parse_formats,
)
from edgekd.export._fp16 import to_fp16
from edgekd.export._lint import LINT_RULES, LINT_TARGETS, Finding, lint_errors, lint_onnx, resolve_profile
from edgekd.export._manifest import MANIFEST_FILE, SCHEMA_VERSION, Manifest, ManifestFile, read_manifest
from edgekd.export._monai import edgekd_network, export_monai_bundle, monai_inference_config, monai_metadata
from edgekd.export._onnx import choose_exporter, export_onnx, has_fake_quant
from edgekd.export._ood import (
    BundleCheck,
    feature_session,
    feature_tensor,
    input_statistics,
    validate_bundle_file,
    validation_data,
)
from edgekd.export._openvino import (
    OPENVINO_EXTRA,
    add_openvino,
    compile_openvino,
    convert_to_openvino,
    infer_openvino,
    ov_config,
    require_openvino,
    run_openvino,
)
from edgekd.export._parity import (
    SEG_TOLERANCES,
    TOLERANCES,
    ParityResult,
    Samples,
    Tolerance,
    default_tolerance,
    make_samples,
    mask_dice,
    ort_session,
    parity_check,
    run_onnx,
    torch_logits,
)
from edgekd.export._tensorrt import build_engine, require_tensorrt, run_engine, sidecar_path, tensorrt_available
from edgekd.export._triton import TRITON_DTYPES, export_triton, parse_triton_config, safe_model_name, triton_config
from edgekd.export._types import INPUT_NAME, OUTPUT_NAME, Precision, TensorInfo, onnx_io
from edgekd.export._verify import FileCheck, VerifyResult, check_isa, verify_bundle, verify_hashes

__all__ = [
    # ONNX export
    "export_onnx",
    "choose_exporter",
    "has_fake_quant",
    "to_fp16",
    "Precision",
    "TensorInfo",
    "onnx_io",
    "INPUT_NAME",
    "OUTPUT_NAME",
    # parity
    "parity_check",
    "ParityResult",
    "Tolerance",
    "TOLERANCES",
    "SEG_TOLERANCES",
    "default_tolerance",
    "mask_dice",
    "Samples",
    "make_samples",
    "torch_logits",
    "ort_session",
    "run_onnx",
    # lint
    "lint_onnx",
    "lint_errors",
    "resolve_profile",
    "Finding",
    "LINT_TARGETS",
    "LINT_RULES",
    # TensorRT
    "build_engine",
    "run_engine",
    "require_tensorrt",
    "tensorrt_available",
    "sidecar_path",
    # Triton model repository
    "export_triton",
    "triton_config",
    "parse_triton_config",
    "safe_model_name",
    "TRITON_DTYPES",
    # MONAI Bundles
    "export_monai_bundle",
    "edgekd_network",
    "monai_metadata",
    "monai_inference_config",
    # bundles
    "write_bundle",
    "export_bundle",
    "resolve_export_config",
    "ExportConfig",
    "ExportFormat",
    "FormatKind",
    "FileJob",
    "OutputJob",
    "DEFAULT_TIMING_CACHE",
    "parse_formats",
    "verify_bundle",
    "check_isa",
    "verify_hashes",
    "read_manifest",
    "preprocess_recipe",
    "BundleFile",
    "Manifest",
    "ManifestFile",
    "Reference",
    "FileCheck",
    "VerifyResult",
    "FORMATS",
    # OpenVINO and ExecuTorch files of a bundle
    "add_openvino",
    "convert_to_openvino",
    "compile_openvino",
    "infer_openvino",
    "run_openvino",
    "ov_config",
    "require_openvino",
    "OPENVINO_EXTRA",
    "add_executorch",
    "export_pte",
    "load_pte",
    "run_pte",
    "set_et_threads",
    "et_threads",
    "executorch_version",
    "require_executorch",
    "EXECUTORCH_EXTRA",
    "CHECKS",
    "SCHEMA_VERSION",
    "MANIFEST_FILE",
    "LABELS_FILE",
    "PREPROCESS_FILE",
    "PARITY_FILE",
    "MODEL_CARD_FILE",
    # what the bundle was validated on: OOD reference, operating point
    "BundleCheck",
    "feature_session",
    "feature_tensor",
    "input_statistics",
    "validate_bundle_file",
    "validation_data",
]
