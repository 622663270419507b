"""edgekd.serve: use a bundle where it is deployed: ``edgekd predict`` and an Open Inference Protocol server.

* :func:`load_model` loads a bundle (hashes and stored parity verified first; ONNX Runtime) or a model
  directory (PyTorch), with the bundle's own preprocessing, labels and operating threshold;
* :func:`predict` classifies files, folders, globs or a data spec and writes CSV, JSON or FHIR, listing every
  unreadable input with its reason, refusing inputs outside the model's intended use (and DICOM objects that
  are no image), and giving each prediction an out-of-distribution score (:class:`OODScorer`);
* :func:`evaluate_bundle` (``edgekd eval BUNDLE``): a bundle's metrics, also at its operating threshold;
* :func:`diagnostic_report` / :func:`fhir_bundle`: HL7 FHIR ``DiagnosticReport`` s with an ``Observation``
  per finding and the model as ``Device``, validated with ``fhir.resources`` (the ``serve`` extra);
* :class:`DicomNode` / :func:`serve_dicom` (``edgekd dicom-node``): a DICOM Storage SCP answering each received
  image with DICOM results (:data:`RESULT_WRITERS`: a Comprehensive SR for classification);
* :class:`InferenceServer` + :func:`create_app` / :func:`serve_models` / :func:`running_server`: the Open
  Inference Protocol v2 REST API (KServe, Triton clients) on FastAPI and uvicorn, with dynamic
  micro-batching (:class:`MicroBatcher`), bounded queues, body limits, an API key off loopback and
  Prometheus ``/metrics``.

This package sits above ``export``, ``quantize`` and ``bench`` and may use them; nothing below imports it.

Example:
    >>> res = predict("bundles/student-int8", ["scans/*.png"], out="preds.csv")
    >>> models = load_models(["bundles/student-int8"])
    >>> serve_models(models, ServeConfig(port=8000, max_batch=32, max_delay_ms=5))  # until Ctrl-C
"""

from edgekd.export import safe_model_name
from edgekd.serve._app import bind_socket, create_app, require_serve_deps, running_server, serve_models
from edgekd.serve._batcher import MicroBatcher, QueueFullError
from edgekd.serve._dicom_node import Destination, DicomNode, NodeConfig, serve_dicom
from edgekd.serve._dicom_sr import RESULT_WRITERS, writers_for
from edgekd.serve._evaluate import evaluate_bundle
from edgekd.serve._fhir import (
    DISCLAIMER,
    FHIR_VERSION,
    diagnostic_report,
    fhir_bundle,
    operation_outcome,
    require_fhir,
    validate_resource,
)
from edgekd.serve._images import IMAGE_EXTS, InputFile, collect_inputs, decode_image, is_dicom, read_image
from edgekd.serve._metrics import Metrics
from edgekd.serve._model import (
    DEFAULT_THRESHOLD,
    FEATURES,
    LoadedModel,
    ModelInfo,
    Prediction,
    is_bundle,
    load_model,
)
from edgekd.serve._ood import OODScore, OODScorer
from edgekd.serve._predict import (
    OUTPUT_FORMATS,
    SKIP_KINDS,
    PredictResult,
    Skipped,
    check_input,
    output_format,
    predict,
    write_predictions,
)
from edgekd.serve._protocol import (
    DATATYPES,
    HEADER_LENGTH,
    InferRequest,
    ProtocolError,
    TensorSpec,
    encode_infer_response,
    oip_datatype,
    parse_infer_request,
    tensor_spec,
)
from edgekd.serve._server import (
    MODEL_VERSION,
    OOD_OUTPUTS,
    InferenceServer,
    Reply,
    ServeConfig,
    is_loopback,
    load_models,
)

__all__ = [
    # models
    "load_model",
    "load_models",
    "LoadedModel",
    "ModelInfo",
    "Prediction",
    "is_bundle",
    "safe_model_name",
    "DEFAULT_THRESHOLD",
    "FEATURES",
    # trust: intended use, out-of-distribution scores, bundle evaluation
    "OODScore",
    "OODScorer",
    "check_input",
    "evaluate_bundle",
    "OOD_OUTPUTS",
    "SKIP_KINDS",
    # predict
    "predict",
    "write_predictions",
    "output_format",
    "PredictResult",
    "Skipped",
    "OUTPUT_FORMATS",
    "collect_inputs",
    "InputFile",
    "decode_image",
    "read_image",
    "is_dicom",
    "IMAGE_EXTS",
    # FHIR
    "diagnostic_report",
    "fhir_bundle",
    "operation_outcome",
    "validate_resource",
    "require_fhir",
    "DISCLAIMER",
    "FHIR_VERSION",
    # DICOM node (edgekd dicom-node): Storage SCP, results as DICOM (one writer per task)
    "DicomNode",
    "NodeConfig",
    "Destination",
    "serve_dicom",
    "RESULT_WRITERS",
    "writers_for",
    # server
    "ServeConfig",
    "InferenceServer",
    "Reply",
    "MicroBatcher",
    "QueueFullError",
    "Metrics",
    "create_app",
    "serve_models",
    "running_server",
    "bind_socket",
    "require_serve_deps",
    "is_loopback",
    "MODEL_VERSION",
    # protocol
    "parse_infer_request",
    "encode_infer_response",
    "InferRequest",
    "ProtocolError",
    "TensorSpec",
    "tensor_spec",
    "oip_datatype",
    "DATATYPES",
    "HEADER_LENGTH",
]
