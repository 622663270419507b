"""The Open Inference Protocol (KServe v2) REST encoding: typed tensors in, typed tensors out.

Follows ``kserve/open-inference-protocol`` (``specification/protocol/inference_rest.md``) and its binary
tensor data extension (what ``tritonclient.http`` sends by default):

* a request is a JSON object ``{"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype",
  "parameters"?, "data"?}], "outputs"?: [{"name", "parameters"?}]}``; ``data`` is a flat or nested list in
  row-major order;
* with the binary extension the JSON header is followed by raw little-endian tensor bytes: the header's
  length is in the ``Inference-Header-Content-Length`` HTTP header and each binary input carries
  ``parameters.binary_data_size``; an output is returned binary when it asks for
  ``parameters.binary_data: true`` (or the request for ``parameters.binary_data_output: true``);
* every error is a JSON ``{"error": "..."}`` with a 4xx status (:class:`ProtocolError`).

Requests are checked against the model's inputs before anything runs: names, datatype (exactly the model's:
no silent casts), rank and non-batch dims, batch size against ``max_batch``, and the element or byte count.

Example:
    >>> req = parse_infer_request(body, None, model_inputs, model_outputs, max_batch=32)
    >>> body, headers = encode_infer_response("tinycnn", "1", req, {"logits": logits})
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekd.export import TensorInfo

__all__ = [
    "DATATYPES",
    "ProtocolError",
    "TensorSpec",
    "InferRequest",
    "oip_datatype",
    "tensor_spec",
    "parse_infer_request",
    "encode_infer_response",
    "error_body",
    "HEADER_LENGTH",
]

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_OIP_OF = {dt.name: name for name, dt in DATATYPES.items()}
HEADER_LENGTH = "Inference-Header-Content-Length"
_KINDS = {
    "b": "booleans",
    "i": "integers",
    "u": "integers",
    "f": "floating-point numbers",
    "U": "strings",
    "S": "strings",
}


class ProtocolError(Exception):
    """A request the server refuses: an HTTP status (4xx/5xx) and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def oip_datatype(numpy_name: str) -> str:
    """``"float32"`` -> ``"FP32"``; a type the protocol has no name for keeps its numpy name upper-cased."""
    return _OIP_OF.get(numpy_name, numpy_name.upper())


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the protocol describes it: symbolic dims are ``-1``."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def tensor_spec(info: TensorInfo) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in info.shape)
    return TensorSpec(info.name, oip_datatype(info.dtype), shape)


@dataclass
class InferRequest:
    """A validated inference request: input arrays by name and the outputs to return (name, binary)."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[tuple[str, bool]]

    @property
    def rows(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


def _bad(message: str) -> ProtocolError:
    return ProtocolError(400, message)


def _header(body: bytes, header_length: int | None) -> tuple[dict[str, Any], memoryview]:
    if header_length is not None and not 0 < header_length <= len(body):
        raise _bad(f"{HEADER_LENGTH} {header_length} does not fit a body of {len(body)} bytes")
    cut = len(body) if header_length is None else header_length
    try:
        req = json.loads(body[:cut])
    except (UnicodeDecodeError, ValueError) as e:
        hint = "" if header_length is not None else f" (binary tensor data needs the {HEADER_LENGTH} header)"
        raise _bad(f"request body is not valid JSON: {str(e).splitlines()[0]}{hint}") from None
    if not isinstance(req, dict):
        raise _bad("the request must be a JSON object with an 'inputs' list")
    return req, memoryview(body)[cut:]


def _check_meta(t: Any, specs: dict[str, TensorSpec]) -> tuple[str, list[int], str, dict[str, Any]]:
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise _bad("each input must be an object with a 'name'")
    name, shape, datatype, params = t["name"], t.get("shape"), t.get("datatype"), t.get("parameters") or {}
    if name not in specs:
        raise _bad(f"unknown input {name!r}; the model's inputs: {', '.join(specs)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _bad(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if datatype not in DATATYPES:
        known = ", ".join(DATATYPES)
        raise _bad(f"input {name!r}: datatype {datatype!r} is not supported (supported: {known})")
    if not isinstance(params, dict):
        raise _bad(f"input {name!r}: 'parameters' must be an object")
    spec = specs[name]
    if datatype != spec.datatype:
        raise _bad(f"input {name!r}: datatype {datatype} does not match the model's {spec.datatype}")
    if len(shape) != len(spec.shape) or any(m != -1 and m != d for m, d in zip(spec.shape[1:], shape[1:])):
        raise _bad(f"input {name!r}: shape {shape} does not match the model's {list(spec.shape)} (-1: any size)")
    return name, shape, datatype, params


def _json_array(name: str, data: Any, shape: list[int], datatype: str) -> np.ndarray:
    if not isinstance(data, list):
        raise _bad(f"input {name!r}: 'data' must be a list (or send binary tensor data)")
    try:
        arr = np.asarray(data)
    except ValueError:
        raise _bad(f"input {name!r}: 'data' is a ragged nested list") from None
    want = DATATYPES[datatype]
    ok = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}[want.kind]
    if arr.size and arr.dtype.kind not in ok:
        what = _KINDS.get(arr.dtype.kind, "non-numeric values")
        raise _bad(f"input {name!r}: 'data' holds {what}, not {datatype} values")
    if arr.size and want.kind in "iu" and arr.dtype.kind in "iu":
        lim = np.iinfo(want)
        if arr.min() < lim.min or arr.max() > lim.max:
            raise _bad(f"input {name!r}: values outside the {datatype} range {lim.min}..{lim.max}")
    if arr.size != math.prod(shape):
        raise _bad(f"input {name!r}: {arr.size} values for shape {shape} ({math.prod(shape)} expected)")
    return arr.astype(want).reshape(shape)


def _binary_array(name: str, raw: memoryview, size: Any, shape: list[int], datatype: str) -> np.ndarray:
    want = DATATYPES[datatype].newbyteorder("<")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad(f"input {name!r}: binary_data_size must be a non-negative integer")
    if size != math.prod(shape) * want.itemsize:
        raise _bad(
            f"input {name!r}: {size} bytes of binary data for {datatype} shape {shape} "
            f"({math.prod(shape) * want.itemsize} expected)"
        )
    if size > len(raw):
        raise _bad(f"input {name!r}: binary_data_size {size} exceeds the {len(raw)} bytes after the JSON header")
    return np.frombuffer(raw[:size], dtype=want).reshape(shape).astype(want.newbyteorder("="), copy=False)


def _outputs(req: dict[str, Any], specs: dict[str, TensorSpec]) -> list[tuple[str, bool]]:
    params = req.get("parameters") or {}
    default_binary = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    wanted = req.get("outputs")
    if wanted is None:
        return [(n, default_binary) for n in specs]
    if not isinstance(wanted, list):
        raise _bad("'outputs' must be a list")
    out = []
    for o in wanted:
        if not isinstance(o, dict) or o.get("name") not in specs:
            name = o.get("name") if isinstance(o, dict) else o
            raise _bad(f"unknown output {name!r}; the model's outputs: {', '.join(specs)}")
        p = o.get("parameters") or {}
        if p.get("classification"):
            raise _bad("the classification extension is not supported; POST an image to /v2/models/NAME/classify")
        out.append((o["name"], bool(p.get("binary_data", default_binary))))
    return out


def parse_infer_request(
    body: bytes, header_length: int | None, inputs: list[TensorSpec], outputs: list[TensorSpec], *, max_batch: int
) -> InferRequest:
    """Decode and validate a request body against a model's inputs and outputs.

    Raises:
        ProtocolError: status 400 with a message naming the problem.
    """
    req, raw = _header(body, header_length)
    specs = {s.name: s for s in inputs}
    tensors = req.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise _bad("the request needs a non-empty 'inputs' list")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for t in tensors:
        name, shape, datatype, params = _check_meta(t, specs)
        if name in arrays:
            raise _bad(f"input {name!r} is given twice")
        if "binary_data_size" in params:
            arrays[name] = _binary_array(name, raw[offset:], params["binary_data_size"], shape, datatype)
            offset += params["binary_data_size"]
        else:
            arrays[name] = _json_array(name, t.get("data"), shape, datatype)
    if offset != len(raw):
        raise _bad(f"{len(raw) - offset} bytes after the tensors are not claimed by any binary_data_size")
    missing = [n for n in specs if n not in arrays]
    if missing:
        raise _bad(f"missing input {missing[0]!r}; the model's inputs: {', '.join(specs)}")
    batches = sorted({int(a.shape[0]) for a in arrays.values()})
    if len(batches) != 1:
        raise _bad(f"every input needs the same batch dimension, got {batches}")
    if not 1 <= batches[0] <= max_batch:
        raise _bad(f"batch dimension {batches[0]} is outside 1..{max_batch} (the server's maximum batch)")
    rid = req.get("id")
    return InferRequest(str(rid) if rid is not None else None, arrays, _outputs(req, {s.name: s for s in outputs}))


def encode_infer_response(
    model_name: str, model_version: str, req: InferRequest, results: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """The response body and HTTP headers for the requested outputs (binary ones appended after the JSON)."""
    outs, blobs = [], []
    for name, binary in req.outputs:
        arr = np.ascontiguousarray(results[name])
        entry: dict[str, Any] = {"name": name, "datatype": oip_datatype(arr.dtype.name), "shape": list(arr.shape)}
        if binary:
            blob = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        outs.append(entry)
    resp: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": outs}
    if req.id is not None:
        resp["id"] = req.id
    head = json.dumps(resp, separators=(",", ":")).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return head + b"".join(blobs), headers
