"""The inference server's logic, independent of the web framework: models, batchers, auth, handlers.

:class:`InferenceServer` answers every route of the Open Inference Protocol v2 REST API plus edgekd's image
endpoint with a :class:`Reply` (status, body, headers) or a :class:`~edgekd.serve.ProtocolError`; the FastAPI
application (:mod:`._app`) only moves bytes between HTTP and these methods.

Safe by default (:class:`ServeConfig`): the server binds 127.0.0.1; any other address needs an API key,
checked as a bearer token with a constant-time comparison on every route except the two health probes.
Bodies are limited in size (also after gzip/deflate decompression), queues are bounded (503 when full), and
nothing about a request's content is logged.

Answers a user can trust: ``/classify`` checks a DICOM body against the model's intended use and answers 422
with the reason when it is outside it (``allow_out_of_scope``: answered, flagged) or is no image (a
segmentation, report, RT object...: 422 whatever the setting); every answer carries the out-of-distribution
score and flag, and ``/infer`` returns them as two extra outputs (``ood_score`` FP32 ``[-1]``,
``out_of_distribution`` BOOL ``[-1]``) listed in the model's metadata when its bundle carries a reference.

Shutdown (:meth:`InferenceServer.begin_drain`): readiness turns false (503) first, so a load balancer stops
sending; requests in flight and those that still arrive during the drain are answered; then the server stops.

Example:
    >>> server = InferenceServer({"tinycnn": load_model("bundles/tiny")}, ServeConfig(max_batch=16))
    >>> reply = await server.model_metadata("tinycnn", "")
    >>> json.loads(reply.body)["inputs"]
    [{'name': 'input', 'datatype': 'FP32', 'shape': [-1, 1, 16, 16]}]
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekd import __version__
from edgekd.errors import ArtifactError, EdgeKDError, InvalidInputError
from edgekd.serve._batcher import MicroBatcher, QueueFullError
from edgekd.serve._fhir import DISCLAIMER, diagnostic_report
from edgekd.serve._images import decode_image, input_attributes, is_dicom, non_image_reason
from edgekd.serve._metrics import Metrics
from edgekd.serve._model import FEATURES, LoadedModel, is_bundle, load_model
from edgekd.serve._openapi import openapi_schema
from edgekd.serve._protocol import (
    HEADER_LENGTH,
    ProtocolError,
    TensorSpec,
    encode_infer_response,
    parse_infer_request,
    tensor_spec,
)
from edgekd.specs import ScopeCheck, Task

__all__ = [
    "ServeConfig",
    "InferenceServer",
    "Reply",
    "is_loopback",
    "load_models",
    "MODEL_VERSION",
    "MIN_API_KEY_LENGTH",
]

MODEL_VERSION = "1"
_log = logging.getLogger(__name__)  # operational events only: never request contents or identifiers
MIN_API_KEY_LENGTH = 16
_IMAGE_TYPES = (
    "image/png",
    "image/jpeg",
    "image/bmp",
    "image/tiff",
    "image/webp",
    "application/octet-stream",
    "application/dicom",
)


def is_loopback(host: str) -> bool:
    """``127.0.0.0/8``, ``::1`` or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig:
    """Server settings (the ``edgekd serve`` options).

    Attributes:
        host, port: where to listen (port 0: any free port, printed at start-up).
        max_batch: rows per model call; also the largest batch one request may send.
        max_delay_ms: how long a request may wait for others to form a batch (0: only those already queued).
        max_queue: requests waiting per model before new ones get 503.
        max_body_mb: the largest request body (after decompression); larger ones get 413.
        api_key: required as ``Authorization: Bearer KEY``; mandatory off loopback.
        fhir: the image endpoint answers a FHIR DiagnosticReport unless asked for ``?format=json``.
        allow_out_of_scope: answer DICOM images outside the model's intended use (flagged) instead of 422.
        drain_s: on SIGTERM, how long readiness reports false (503) while requests are still answered, before
            the server stops accepting connections and finishes those in flight.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 256
    max_body_mb: float = 32.0
    api_key: str | None = field(default=None, repr=False)
    fhir: bool = False
    allow_out_of_scope: bool = False
    drain_s: float = 5.0

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def check(self) -> ServeConfig:
        """Validate the settings; returns ``self``.

        Raises:
            InvalidInputError: a value out of range, or a non-loopback address without an API key (exit 3).
        """
        if not 0 <= self.port <= 65535:
            raise InvalidInputError(f"port {self.port} is not in 0..65535")
        for name, value, low in (
            ("max-batch", self.max_batch, 1),
            ("max-queue", self.max_queue, 1),
            ("max-delay-ms", self.max_delay_ms, 0),
            ("max-body-mb", self.max_body_mb, 1e-6),
            ("drain-s", self.drain_s, 0),
        ):
            if value < low:
                raise InvalidInputError(f"--{name} must be >= {low:g}, got {value}")
        if self.api_key is not None and len(self.api_key) < MIN_API_KEY_LENGTH:
            raise InvalidInputError(
                f"the API key has {len(self.api_key)} characters; use at least {MIN_API_KEY_LENGTH}",
                "e.g. python -c 'import secrets; print(secrets.token_urlsafe())'",
            )
        if not is_loopback(self.host) and not self.api_key:
            raise InvalidInputError(
                f"binding {self.host} exposes the models beyond this machine and needs an API key",
                "pass --api-key (or set EDGEKD_API_KEY), or bind 127.0.0.1",
            )
        return self


@dataclass
class Reply:
    """An HTTP answer: status, body bytes and headers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})


def _json(payload: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(payload, separators=(",", ":")).encode())


@dataclass
class _Served:
    model: LoadedModel
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batcher: MicroBatcher


# The extra outputs of /infer for a model with an out-of-distribution reference.
OOD_OUTPUTS = (TensorSpec("ood_score", "FP32", (-1,)), TensorSpec("out_of_distribution", "BOOL", (-1,)))


def _ood_results(m: LoadedModel, x: Any, results: dict) -> dict:
    """``ood_score`` / ``out_of_distribution`` arrays of one batch (empty without a reference)."""
    import numpy as np

    scores = m.ood_scores(np.asarray(x, dtype=np.float32), results)
    if scores is None:
        return {}
    return {
        "ood_score": np.array([s.score for s in scores], dtype=np.float32),
        "out_of_distribution": np.array([s.out_of_distribution for s in scores], dtype=np.bool_),
    }


MASK_OUTPUT = "mask"  # segmentation models: the argmax mask, UINT8 [N, H, W] at the model's input resolution


def mask_outputs(m: LoadedModel) -> list[TensorSpec]:
    """The ``mask`` output of a segmentation model (its shape in the metadata: ``[-1, H, W]``), else none."""
    if m.info.task is not Task.SEGMENTATION:
        return []
    h, w = m.preprocess.input_size
    return [TensorSpec(MASK_OUTPUT, "UINT8", (-1, int(h), int(w)))]


def _mask_results(m: LoadedModel, results: dict) -> dict:
    """``mask``: the class index of every pixel (argmax over the class axis of the logits), as ``uint8``."""
    import numpy as np

    if m.info.task is not Task.SEGMENTATION:
        return {}
    logits = np.asarray(results[m.outputs[0].name])
    return {MASK_OUTPUT: logits.argmax(axis=1).astype(np.uint8)}


class InferenceServer:
    """Routes of the server as coroutines returning :class:`Reply`; start() before use, stop() after."""

    def __init__(self, models: Mapping[str, LoadedModel], config: ServeConfig) -> None:
        if not models:
            raise InvalidInputError("no model to serve", "pass at least one bundle")
        self.config = config.check()
        self.metrics = Metrics()
        self.draining = False
        self.models: dict[str, _Served] = {}
        for name, m in models.items():
            batcher = MicroBatcher(
                m.run,
                max_batch=config.max_batch,
                max_delay_s=config.max_delay_ms / 1000,
                max_queue=config.max_queue,
                on_batch=lambda rows, s, name=name: self.metrics.observe_batch(name, rows, s),
            )
            outs = [tensor_spec(t) for t in m.outputs] + (list(OOD_OUTPUTS) if m.ood is not None else [])
            outs += mask_outputs(m)
            self.models[name] = _Served(m, [tensor_spec(t) for t in m.inputs], outs, batcher)

    async def start(self) -> None:
        for s in self.models.values():
            await s.batcher.start()

    async def stop(self) -> None:
        for s in self.models.values():
            await s.batcher.stop()

    def begin_drain(self) -> None:
        """Readiness turns false (503); requests are still answered until the server stops."""
        if not self.draining:
            self.draining = True
            _log.warning("draining: readiness is false; in-flight requests are answered before the server stops")

    # ---------------------------------------------------------------- auth, lookup, bodies

    def authorize(self, authorization: str | None) -> None:
        """Check ``Authorization: Bearer KEY`` when a key is set (constant-time comparison).

        Raises:
            ProtocolError: 401 when the token is missing or wrong.
        """
        key = self.config.api_key
        if key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ProtocolError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'")

    def metric_model(self, name: str | None) -> str:
        """The metrics label for a model name: only served names, so clients cannot add label values."""
        return name if name in self.models else ("-" if name is None else "unknown")

    def _served(self, name: str, version: str) -> _Served:
        s = self.models.get(name)
        if s is None:
            raise ProtocolError(404, f"unknown model {name!r}; served models: {', '.join(self.models)}")
        if version not in ("", MODEL_VERSION):
            raise ProtocolError(404, f"model {name!r} has no version {version!r}; versions: {MODEL_VERSION}")
        return s

    def decode_body(self, body: bytes, encoding: str | None) -> bytes:
        """Undo ``Content-Encoding: gzip|deflate`` within the body size limit (413 beyond it)."""
        encoding = (encoding or "identity").strip().lower()
        if encoding == "identity":
            return body
        if encoding not in ("gzip", "deflate"):
            raise ProtocolError(415, f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
        limit = self.config.max_body_bytes
        d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            out = d.decompress(body, limit + 1)
        except zlib.error as e:
            raise ProtocolError(400, f"the {encoding} body does not decompress: {e}") from None
        if len(out) > limit or d.unconsumed_tail:
            raise ProtocolError(413, f"the decompressed body exceeds the {self.config.max_body_mb:g} MB limit")
        return out

    async def _run(self, name: str, s: _Served, feeds: dict) -> dict:
        try:
            return await s.batcher.submit(feeds)
        except QueueFullError:
            raise ProtocolError(503, f"model {name!r} is busy: its request queue is full; retry later") from None
        except EdgeKDError as e:
            _log.error("model %s: inference failed: %s", name, e.message)
            raise ProtocolError(500, f"inference failed: {e.message}") from None
        except Exception as e:  # ONNX Runtime's own errors: logged by type, never a traceback to the client
            _log.error("model %s: inference failed (%s)", name, type(e).__name__)
            raise ProtocolError(500, f"inference failed ({type(e).__name__})") from e

    # ---------------------------------------------------------------- routes

    async def live(self) -> Reply:
        return _json({"live": True})

    async def ready(self) -> Reply:
        if self.draining:
            return _json({"ready": False, "reason": "shutting down"}, 503)
        return _json({"ready": True})

    async def server_metadata(self) -> Reply:
        return _json(
            {"name": "edgekd", "version": __version__, "extensions": ["binary_tensor_data", "edgekd_classify"]}
        )

    async def model_metadata(self, name: str, version: str) -> Reply:
        s = self._served(name, version)
        return _json(
            {
                "name": name,
                "versions": [MODEL_VERSION],
                "platform": "onnxruntime_onnx",
                "inputs": [t.to_json() for t in s.inputs],
                "outputs": [t.to_json() for t in s.outputs],
                "parameters": _model_parameters(s.model),
            }
        )

    async def model_ready(self, name: str, version: str) -> Reply:
        self._served(name, version)
        if self.draining:
            return _json({"name": name, "ready": False}, 503)
        return _json({"name": name, "ready": True})

    async def infer(self, name: str, version: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        s = self._served(name, version)
        body = self.decode_body(body, headers.get("content-encoding"))
        raw_len = headers.get(HEADER_LENGTH.lower())
        if raw_len is not None and not raw_len.strip().isdigit():
            raise ProtocolError(400, f"{HEADER_LENGTH} must be a byte count, got {raw_len!r}")
        req = parse_infer_request(
            body, int(raw_len) if raw_len is not None else None, s.inputs, s.outputs, max_batch=self.config.max_batch
        )
        outputs = await self._run(name, s, req.inputs)
        outputs.update(_ood_results(s.model, req.inputs[s.model.inputs[0].name], outputs))
        outputs.update(_mask_results(s.model, outputs))
        outputs.pop(FEATURES, None)
        payload, hdrs = encode_infer_response(name, MODEL_VERSION, req, outputs)
        return Reply(200, payload, hdrs)

    async def classify(
        self, name: str, version: str, body: bytes, headers: Mapping[str, str], fmt: str | None
    ) -> Reply:
        """An encoded image in, the label and probabilities (or a FHIR DiagnosticReport) out."""
        s = self._served(name, version)
        fmt = fmt or ("fhir" if self.config.fhir else "json")
        if fmt not in ("json", "fhir"):
            raise ProtocolError(400, f"format {fmt!r} is not one of json, fhir")
        ctype = (headers.get("content-type") or "application/octet-stream").split(";")[0].strip().lower()
        if ctype not in _IMAGE_TYPES:
            raise ProtocolError(415, f"Content-Type {ctype!r} is not an image type ({', '.join(_IMAGE_TYPES)})")
        m = s.model
        data = self.decode_body(body, headers.get("content-encoding"))
        scope = self._check_scope(m, data)
        try:
            image = decode_image(data, m.preprocess.data_channels)
            x = m.prepare([image])
        except EdgeKDError as e:  # DICOM that cannot be decoded here (no pixel data, no decoder...) is 415
            raise ProtocolError(415 if is_dicom(data) else 400, e.message) from None
        outputs = await self._run(name, s, {m.inputs[0].name: x})
        logits, ood = outputs[m.outputs[0].name], m.ood_scores(x, outputs)
        if m.info.task is Task.SEGMENTATION:
            if fmt == "fhir":
                raise ProtocolError(400, "a segmentation model answers with a mask: use format=json (or /infer)")
            pred = m.segment(logits, ["request"], sizes=[tuple(image.shape[-2:])], ood=ood, scopes=[scope])[0]
            return _json(_segment_reply(name, pred, m))
        pred = m.classify(logits, ["request"], ood=ood, scopes=[scope])[0]
        if fmt == "fhir":
            return Reply(
                200, json.dumps(diagnostic_report(pred, m.info)).encode(), {"Content-Type": "application/fhir+json"}
            )
        info = m.info
        return _json(
            {
                "model_name": name,
                "model_version": MODEL_VERSION,
                "label": pred.label,
                "probabilities": pred.probabilities,
                "decision": pred.decision,
                "threshold": info.threshold,
                "threshold_source": info.threshold_source,
                "ood_score": pred.ood_score,
                "out_of_distribution": pred.out_of_distribution,
                "ood_spaces": pred.ood_spaces,
                "intended_use": pred.intended_use,
                "scope_reason": pred.scope_reason,
                "flags": pred.flags,
                "sha256": info.sha256,
                "disclaimer": DISCLAIMER,
            }
        )

    def _check_scope(self, m: LoadedModel, data: bytes) -> ScopeCheck:
        """The intended-use check of an image body; 422 when it is refused."""
        try:
            attrs = input_attributes(data)
        except EdgeKDError as e:
            raise ProtocolError(415, e.message) from None
        reason = non_image_reason(attrs)
        if reason is not None:
            raise ProtocolError(422, reason)
        scope = m.check_scope(attrs)
        if scope.status == "out-of-scope" and not self.config.allow_out_of_scope:
            raise ProtocolError(
                422,
                f"outside the model's intended use: {scope.reason} (the server answers such "
                "images, flagged, only with --allow-out-of-scope)",
            )
        return scope

    async def openapi(self) -> Reply:
        return _json(openapi_schema(self))

    async def metrics_text(self) -> Reply:
        depth = {n: s.batcher.depth for n, s in self.models.items()}
        return Reply(200, self.metrics.render(depth).encode(), {"Content-Type": "text/plain; version=0.0.4"})


def _segment_reply(name: str, pred: Any, m: LoadedModel) -> dict[str, Any]:
    """The JSON answer of ``/classify`` for a segmentation model: the mask as a base64 PNG of class indices
    at the image's own size, each class's share of the area, and the trust fields of a classification."""
    import base64

    from edgekd.serve._masks import mask_png

    return {
        "model_name": name,
        "model_version": MODEL_VERSION,
        "label": pred.label,
        "area": pred.probabilities,
        "mask_shape": list(pred.mask.shape),
        "mask_png": base64.b64encode(mask_png(pred.mask)).decode("ascii"),
        "ood_score": pred.ood_score,
        "out_of_distribution": pred.out_of_distribution,
        "intended_use": pred.intended_use,
        "scope_reason": pred.scope_reason,
        "flags": pred.flags,
        "sha256": m.info.sha256,
        "disclaimer": DISCLAIMER,
    }


def _model_parameters(m: LoadedModel) -> dict[str, Any]:
    """What a client needs to read the outputs: the task, the class names in logit order and, for
    segmentation, what the ``mask`` tensor holds."""
    out: dict[str, Any] = {"task": m.info.task.value, "labels": list(m.info.labels)}
    if m.info.task is Task.SEGMENTATION:
        h, w = m.preprocess.input_size
        out["mask"] = (
            f"{MASK_OUTPUT}: UINT8 [batch, {h}, {w}], the class index (label order) of every pixel at the model's "
            "input resolution"
        )
    return out


def _split_named(given: str) -> tuple[str | None, str]:
    """``NAME=BUNDLE`` -> (NAME, BUNDLE); a plain path (even one holding '=') -> (None, path)."""
    name, sep, path = given.partition("=")
    if sep and name and path and not Path(given).exists():
        return name, path
    return None, given


def load_models(
    bundles: Sequence[str],
    *,
    model_name: str | None = None,
    precision: str | None = None,
    verify: bool = True,
    threads: int = 0,
    runtime: str | None = None,
) -> dict[str, LoadedModel]:
    """Load the bundles to serve, each under its name (``NAME=BUNDLE``, ``model_name`` or the bundle's own).

    Raises:
        InvalidInputError: no bundle, ``model_name`` with several bundles, or two bundles with one name (exit 3).
        ArtifactError: a path that is not a bundle (exit 4); VerificationError: a modified bundle (exit 6).
    """
    if not bundles:
        raise InvalidInputError("no bundle to serve", "pass at least one bundle directory")
    if model_name is not None and len(bundles) > 1:
        raise InvalidInputError("--model-name names a single bundle", "name several bundles as NAME=BUNDLE")
    models: dict[str, LoadedModel] = {}
    for given in bundles:
        name, path = _split_named(given)
        if not is_bundle(path):
            hint = "export it first: edgekd export DIR --out BUNDLE" if Path(path).is_dir() else "check the path"
            raise ArtifactError(f"{path} is not a bundle (no manifest.json)", hint)
        m = load_model(
            path, name=name or model_name, precision=precision, verify=verify, threads=threads, runtime=runtime
        )
        if m.info.name in models:
            raise InvalidInputError(f"two bundles would both be served as {m.info.name!r}", "name them: NAME=BUNDLE")
        models[m.info.name] = m
    return models
