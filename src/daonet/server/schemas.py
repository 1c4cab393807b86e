"""Response models and OpenAPI fragments of the HTTP API (documentation only: no logic lives here)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

OCTET = "application/octet-stream"
JSON = "application/json"
PROMETHEUS = "text/plain"

__all__ = ["ErrorBody", "PredictResponse", "ModelInfo", "ModelList", "PREDICT_BODY", "ERRORS", "METRICS_RESPONSE",
           "OCTET", "JSON"]


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable code, e.g. invalid_payload")
    detail: str = Field(description="what was wrong and how to fix it")


class PredictResponse(BaseModel):
    model_id: str
    model_version: str
    label: str = Field(description="the top class's name")
    index: int = Field(description="the top class's index")
    probabilities: list[float] = Field(description="one per class, in the order of GET /v1/models classes")
    nnz: int = Field(description="non-zero outputs the payload carried")


class ModelInfo(BaseModel):
    model_id: str
    version: str
    classes: list[str]
    n_outputs: int
    device_input: dict[str, Any] | None
    first_layer: dict[str, Any]
    drop: dict[str, Any] | None
    wire_version: int


class ModelList(BaseModel):
    models: list[ModelInfo]


VALUES_RULE = "finite and > 0 (ReLU outputs; a zero output is left out, never sent)"

JSON_PAYLOAD_SCHEMA = {
    "type": "object",
    "required": ["model_version", "indices", "values"],
    "properties": {
        "model_version": {"type": "string", "description": "the bundle version (GET /v1/models)"},
        "indices": {"type": "array", "items": {"type": "integer", "minimum": 0},
                    "description": "strictly increasing indices of the non-zero first-layer outputs"},
        "values": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0},
                   "description": f"their values: {VALUES_RULE}"},
        "n_outputs": {"type": "integer", "description": "optional: the first layer's output count, checked"},
    },
}
BINARY_PAYLOAD_SCHEMA = {
    "type": "string", "format": "binary",
    "description": (
        "wire format v1, little-endian: magic 'DAO1' (4 bytes), wire version 1 (u8), index width 2|4 (u8), "
        "value width 2|4 (u8: float16|float32), L = length of the model version (u8), n_outputs (u32), "
        "nnz (u32), the model version (L ASCII bytes), nnz strictly increasing indices (uint16|uint32), "
        f"nnz values (float16|float32, {VALUES_RULE}). The device computes them as relu(W z + b) with "
        "z = (x scaled to [0, 1] for 8-bit pixels - manifest mean) / manifest std, then drops outputs."
    ),
}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": "The dropped activations only: binary wire format v1 or its JSON form. Never a raw input.",
        "content": {OCTET: {"schema": BINARY_PAYLOAD_SCHEMA}, JSON: {"schema": JSON_PAYLOAD_SCHEMA}},
    }
}
METRICS_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text exposition format 0.0.4",
          "content": {PROMETHEUS: {"schema": {"type": "string"}}}},
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "malformed payload (truncated, wrong magic, not JSON)",
        401: "missing or wrong API key (or a key sent in the query string)",
        404: "unknown model id",
        409: "payload made for another model version (both versions in the body)",
        413: "body larger than the configured limit",
        415: "content type is neither application/octet-stream nor application/json",
        422: "payload content is impossible (index out of range or repeated, values not > 0, NaN/inf, too many, "
             "or so large that the forward pass overflows)",
        429: "too many failed authentications from this client; retry after the Retry-After seconds",
    }.items()
}
