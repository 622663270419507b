"""The OpenAPI 3.1 description of a running server (``GET /openapi.json``).

Written by hand from the Open Inference Protocol v2 REST specification (``kserve/open-inference-protocol``,
``specification/protocol/inference_rest.md``) and edgekd's own routes, for the models this server serves: the
``name`` path parameter lists them, ``version`` is ``1``. FastAPI's generated schema would describe nothing
here, because the routes read raw bodies (binary tensor data, images). The schema is what the fuzz tests
(Schemathesis) generate requests from, so it describes bodies loosely enough to let malformed ones through:
validation is the server's job, and every refusal must be a 4xx, never a 5xx.

Example:
    >>> openapi_schema(server)["paths"]["/v2/models/{name}/infer"]["post"]["responses"].keys()
    dict_keys(['200', '400', '401', '404', '413', '415', '503'])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from edgekd import __version__


class _Config(Protocol):
    api_key: str | None


class InferenceServer(Protocol):
    """What the document describes of an :class:`~edgekd.serve.InferenceServer` (a protocol, so that this module
    does not import the server that serves it)."""

    models: Mapping[str, Any]
    config: _Config


__all__ = ["openapi_schema"]

_ERROR = {"description": "refused", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_DATATYPES = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]
_IMAGE_TYPES = ["image/png", "image/jpeg", "application/dicom", "application/octet-stream"]


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _ERROR for c in codes}


def _components() -> dict[str, Any]:
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"type": "string", "enum": _DATATYPES},
            "parameters": {"type": "object"},
            "data": {"type": "array"},
        },
    }
    return {
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "InferRequest": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "parameters": {"type": "object"},
                    "inputs": {"type": "array", "items": tensor},
                    "outputs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                        },
                    },
                },
            },
            "InferResponse": {
                "type": "object",
                "required": ["model_name", "outputs"],
                "properties": {
                    "model_name": {"type": "string"},
                    "model_version": {"type": "string"},
                    "id": {"type": "string"},
                    "outputs": {"type": "array", "items": tensor},
                },
            },
            "Classification": {
                "type": "object",
                "required": ["label", "probabilities"],
                "properties": {
                    "label": {"type": "string"},
                    "probabilities": {"type": "object"},
                    "decision": {"type": ["string", "null"]},
                    "ood_score": {"type": ["number", "null"]},
                    "out_of_distribution": {"type": ["boolean", "null"]},
                    "intended_use": {"type": "string"},
                },
            },
        },
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    }


def _model_paths(names: list[str]) -> dict[str, Any]:
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": names}}
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "enum": ["1"]}}
    ok_json = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
    infer = {
        "post": {
            "summary": "Open Inference Protocol inference (JSON, or the binary tensor data extension)",
            "parameters": [
                {
                    "name": "Inference-Header-Content-Length",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "responses": {
                "200": {
                    "description": "outputs",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                **_errors(400, 401, 404, 413, 415, 503),
            },
        }
    }
    classify = {
        "post": {
            "summary": "An encoded image (PNG, JPEG, DICOM...): label, probabilities, decision, OOD score",
            "parameters": [
                {
                    "name": "format",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": ["json", "fhir"]},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in _IMAGE_TYPES},
            },
            "responses": {
                "200": {
                    "description": "classification",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Classification"}},
                        "application/fhir+json": {"schema": {"type": "object"}},
                    },
                },
                **_errors(400, 401, 404, 413, 415, 422, 503),
            },
        }
    }
    meta = {"get": {"summary": "model metadata", "responses": {"200": ok_json, **_errors(401, 404)}}}
    ready = {"get": {"summary": "model readiness", "responses": {"200": ok_json, **_errors(401, 404, 503)}}}
    out: dict[str, Any] = {}
    for base, params in (("/v2/models/{name}", [name]), ("/v2/models/{name}/versions/{version}", [name, version])):
        for suffix, op in (("/infer", infer), ("/classify", classify), ("", meta), ("/ready", ready)):
            out[base + suffix] = {"parameters": params, **op}
    return out


def openapi_schema(server: InferenceServer) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``server``'s routes (see the module docstring)."""
    ok_json = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
    public = {"security": []}
    paths = {
        "/v2/health/live": {"get": {"summary": "liveness", **public, "responses": {"200": ok_json}}},
        "/v2/health/ready": {
            "get": {
                "summary": "readiness (503 while draining)",
                **public,
                "responses": {"200": ok_json, **_errors(503)},
            }
        },
        "/v2": {"get": {"summary": "server metadata", "responses": {"200": ok_json, **_errors(401)}}},
        "/metrics": {
            "get": {
                "summary": "Prometheus text",
                "responses": {
                    "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **_errors(401),
                },
            }
        },
        **_model_paths(sorted(server.models)),
    }
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "edgekd serve", "version": __version__},
        "paths": paths,
        "components": _components(),
    }
    if server.config.api_key:
        doc["security"] = [{"bearer": []}]
    return doc
