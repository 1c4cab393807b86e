"""A client written from docs/guide/bundles.md alone (numpy + safetensors + struct, no daonet.device): its payloads
get the same accuracy from the real server as the daonet device runtime's. Skipping the normalization the page
describes is what an earlier independent client did; it scores visibly lower."""

from __future__ import annotations

import json
import struct

import httpx
import numpy as np
from safetensors.numpy import load_file

PREDICT = "/v1/models/digits-mlp/predict"


def readme_client_payload(manifest: dict, weight: np.ndarray, bias: np.ndarray, pixels: np.ndarray,
                          rng: np.random.Generator, normalize: bool = True) -> bytes:
    """docs/guide/bundles.md "Wire format v1": scale 8-bit pixels to [0, 1], normalize with the manifest's mean/std,
    first layer + ReLU, drop at the manifest's rate, send the survivors (> 0) in the documented byte layout."""
    x = pixels.astype(np.float32) / 255.0
    if normalize:
        mean = np.asarray(manifest["normalization"]["mean"], np.float32)[:, None, None]
        std = np.asarray(manifest["normalization"]["std"], np.float32)[:, None, None]
        x = (x - mean) / std
    h = np.maximum(weight @ x.reshape(-1) + bias, 0)
    h[rng.random(h.size) < manifest["drop"]["rate"]] = 0
    idx = np.flatnonzero(h)
    version = manifest["version"].encode("ascii")
    header = struct.pack("<4sBBBBII", b"DAO1", 1, 2, 4, len(version), h.size, idx.size)
    return header + version + idx.astype("<u2").tobytes() + h[idx].astype("<f4").tobytes()


def test_client_from_the_readme_gets_the_runtime_accuracy(server_url, serve_digits_bundle, serve_digits_run):
    from daonet.device import DeviceModel, RandomMasks

    d = serve_digits_bundle.device
    manifest = json.loads((d / "manifest.json").read_text())
    tensors = load_file(str(d / "first_layer.safetensors"))
    x, y = serve_digits_run.dataset.x_test[:300], serve_digits_run.dataset.y_test[:300]
    pixels = np.round(x * 255).astype(np.uint8)
    device = DeviceModel.load(d)
    accuracy = {}
    with httpx.Client(base_url=server_url, timeout=30) as http:
        def score(bodies: list[bytes]) -> float:
            preds = [http.post(PREDICT, content=b, headers={"Content-Type": "application/octet-stream"}).json()
                     ["index"] for b in bodies]
            return float(np.mean(np.array(preds) == y))

        rng = np.random.default_rng(0)
        accuracy["readme"] = score([readme_client_payload(manifest, tensors["weight"], tensors["bias"], p, rng)
                                    for p in pixels])
        accuracy["runtime"] = score([p.data for p in device.encode_many(pixels, RandomMasks(0))])
        rng = np.random.default_rng(0)
        accuracy["no_normalization"] = score([readme_client_payload(manifest, tensors["weight"], tensors["bias"], p,
                                                                    rng, normalize=False) for p in pixels])
    assert abs(accuracy["readme"] - accuracy["runtime"]) <= 0.05, accuracy
    assert accuracy["no_normalization"] < accuracy["runtime"] - 0.05, accuracy
