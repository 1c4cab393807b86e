"""Device-side speed: encode (+ certificate) per input in numpy, in Node and in Chromium, in one run.

    python bench/js_bench.py --out reports/js-bench

For real test inputs of small real models, one per device layer kind (each trained here for one epoch on a
subset, p=0.5 unless said, cached under .daonet-cache/js-bench): MNIST mlp (dense 784-800), MNIST cnn with a 4x4
patchify stem and with an overlapping 4x4 stride-2 stem, ECG5000 cnn1d (140 samples) and FordA cnn1d (500
samples) with patchify stems and with overlapping stems (ECG5000 kernel 8 stride 4 and FordA kernel 10 stride 5
at p=0.9, the FordA one also at p=0.5), two device blocks (mlp with two device layers; ECG5000 cnn1d with two layers and
max pooling) and the two least-leakage heads (ECG5000: two layers, pooling 4; MNIST: three layers, pooling 2;
both under the Gaussian mechanism), the same work is timed in each runtime: validate, first layer (+ block), ReLU,
keyed mask (HMAC-SHA256), the privacy policy with its certificate, and the wire v1 bytes. That is what ``Client.encode``
(Python) and ``device.encode`` (JavaScript) do per request.

- numpy: ``DeviceModel.encode_certified`` one input at a time (one BLAS thread);
- Node: ``daonet-device.mjs`` under ``node`` (tests/js/device_runner.mjs);
- Chromium: the same module in Debian's headless Chromium, loaded from ``daonet serve --web`` (the page's
  own origin, so the device bundle is fetched and verified as a user's browser would).

Each runtime encodes the inputs round-robin for ``--seconds`` after a warm-up, in ``--rounds`` interleaved
rounds (numpy, Node, Chromium, numpy, ...); the fastest round of each is reported (on a shared machine the
others measure the neighbours), as milliseconds per input and the ratio to numpy in the same run. The JS
payload bytes are checked against numpy's first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
KEY = bytes(range(32))
MODELS = {  # name: (data set, model, model kwargs, training examples, extra TrainConfig fields)
    "mnist-mlp": ("mnist", "mlp", {"hidden": 800, "hidden2": 64}, 5000, {}),
    "mnist-cnn": ("mnist", "cnn", {"stem": 16, "patch": 4, "width": 16}, 3000, {}),
    "mnist-cnn-overlap": ("mnist", "cnn", {"stem": 8, "patch": 4, "stride": 2, "width": 16}, 2000, {}),
    "ecg5000-cnn1d": ("ecg5000", "cnn1d", {"stem": 32, "patch": 4, "width": 16}, 500, {}),
    "forda-cnn1d": ("ucr:FordA", "cnn1d", {"stem": 32, "patch": 4, "width": 16}, 1000, {}),
    # overlapping conv1d stems as in bench/device_step.py --kinds: ECG5000 kernel 8 stride 4, FordA kernel 10 stride 5
    "ecg5000-cnn1d-overlap": ("ecg5000", "cnn1d", {"stem": 32, "patch": 8, "stride": 4, "width": 16}, 500,
                              {"drop_rate": 0.9}),
    "forda-cnn1d-overlap": ("ucr:FordA", "cnn1d", {"stem": 32, "patch": 10, "stride": 5, "width": 16}, 1000,
                            {"drop_rate": 0.9}),
    # the same FordA stem at p = 0.5: more outputs survive than the input has values, so the policy chooses rows
    "forda-cnn1d-overlap-p0.5": ("ucr:FordA", "cnn1d", {"stem": 32, "patch": 10, "stride": 5, "width": 16}, 1000,
                                 {}),
    "mnist-mlp-block2": ("mnist", "mlp", {"hidden": 256, "hidden2": 64}, 3000, {"device_layers": 2}),
    "ecg5000-cnn1d-block2-pool": ("ecg5000", "cnn1d", {"stem": 16, "patch": 4, "width": 16}, 500,
                                  {"device_layers": 2, "device_pool": 2}),
    # the least-leakage recipe's device head: two conv layers, max pooling 4, the Gaussian mechanism, no dropping
    "ecg5000-least-leakage": ("ecg5000", "cnn1d", {"stem": 32, "patch": 4, "width": 16, "ldp_epsilon": 4096.0}, 500,
                              {"device_layers": 2, "device_pool": 4, "drop_rate": 0.0}),
    # MNIST's least-leakage head: the 4x4 stem of 64 channels, two 3x3 convolutions, max pooling 2, the mechanism
    "mnist-least-leakage": ("mnist", "cnn", {"ldp_epsilon": 4096.0}, 2000,
                            {"device_layers": 3, "device_pool": 2, "drop_rate": 0.0}),
}


# models whose certified step takes a second or more per input in some runtime: fewer test inputs (each round checks
# every payload before it times)
FEW_INPUTS = {"forda-cnn1d-overlap-p0.5": 6}


def build(name: str, cache: Path) -> tuple[Path, Path, np.ndarray]:
    """(device dir, server dir, test inputs as the device holds them)."""
    from daonet.bundle import bundle_is_current
    from daonet.data import load_dataset

    dataset, model, kwargs, n_train, extra = MODELS[name]
    root = cache / name
    ds = load_dataset(dataset)
    xs = ds.x_test[: FEW_INPUTS.get(name, 40)]
    raw_dtype = ds.info.get("raw_dtype", "float32")  # what the device holds: 8-bit pixels or float samples
    if raw_dtype == "uint8":
        xs = np.clip(np.rint(xs * 255), 0, 255).astype(np.uint8)
    else:
        xs = xs.astype(np.float32)
    if not bundle_is_current(root):
        import torch

        from daonet.exporting import export_model
        from daonet.train import TrainConfig, train

        torch.set_num_threads(1)
        result = train(TrainConfig(dataset=dataset, model=model, epochs=1, n_train=n_train, n_test=200,
                                   model_kwargs=kwargs, **{"drop_rate": 0.5, **extra}), progress=False)
        export_model(result.model, root, model_id=name, classes=result.dataset.classes,
                     raw_dtype=raw_dtype)
    return root / "device", root / "server", xs


def time_numpy(device, xs: np.ndarray, seconds: float) -> float:
    from daonet.device.masks import KeyedMasks

    masks = KeyedMasks(KEY, model_version=device.version)
    for x in xs[:5]:
        device.encode_certified(x, masks)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        device.encode_certified(xs[n % len(xs)], masks)
        n += 1
    return (time.perf_counter() - t0) / n


def time_node(device_dir: Path, xs: np.ndarray, seconds: float, expected: list[str]) -> float:
    from test_js_device import case, node_binary, run_js

    node = node_binary()
    if node is None:
        raise SystemExit("Node.js >= 18 is needed (apt-get install nodejs)")
    out = run_js(node, device_dir, [case(x) for x in xs], key=KEY, time_s=seconds, timeout=600)
    got = [r["payload"] for r in out["results"]]
    if got != expected:
        raise SystemExit(f"{device_dir}: Node payloads differ from numpy's; not timing a different computation")
    return out["seconds_per_input"]


BROWSER_SETUP = """async ([path, key, inputs, dtype]) => {
  const dn = await import('/web/daonet-device.mjs');
  const device = await dn.loadDevice(path);
  const masks = new dn.KeyedMasks(Uint8Array.from(key), device.version);
  const T = dtype === 'uint8' ? Uint8Array : Float32Array;
  const xs = inputs.map((x) => T.from(x));
  const hex = (b) => Array.from(b, (v) => v.toString(16).padStart(2, '0')).join('');
  const payloads = [];
  for (const x of xs) payloads.push(hex((await device.encode(x, { masks })).data));
  window.benchState = { device, masks, xs };
  return payloads;
}"""
BROWSER_ROUND = """async (seconds) => {
  const { device, masks, xs } = window.benchState;
  const t0 = performance.now();
  let n = 0;
  while (performance.now() - t0 < seconds * 1000) { await device.encode(xs[n % xs.length], { masks }); n++; }
  return (performance.now() - t0) / 1000 / n;
}"""


class Chromium:
    """One headless Chromium page on the ``--web`` server, with a device bundle loaded in it."""

    def __init__(self, url: str) -> None:
        from playwright.sync_api import sync_playwright
        from test_web_page import CHROMIUM, CHROMIUM_ARGS

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        self.page = self.browser.new_page()
        self.page.goto(url)

    def load(self, model_id: str, xs: np.ndarray, expected: list[str]) -> None:
        got = self.page.evaluate(BROWSER_SETUP, [f"/device-bundles/{model_id}/", list(KEY),
                                                 xs.reshape(len(xs), -1).tolist(), str(xs.dtype)])
        if got != expected:
            raise SystemExit(f"{model_id}: Chromium payloads differ from numpy's; not timing a different computation")

    def time(self, seconds: float) -> float:
        return self.page.evaluate(BROWSER_ROUND, seconds)

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()


def layer_label(device) -> str:
    """The device computation in a few words: kind, patchify or overlapping, block."""
    label = device.kind
    if device.kind != "dense":
        patchify = all(s >= k for s, k in zip(device.stride, device.kernel, strict=True))
        label += " patchify" if patchify else " overlapping"
    if device.block:
        label += " + block (" + ", ".join(step.describe().split(" kernel")[0] for step in device.block) + ")"
    return label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per runtime, model and round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the fastest of each is reported")
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--cache", type=Path, default=ROOT / ".daonet-cache" / "js-bench")
    ap.add_argument("--out", type=Path, default=None, help="directory for js-bench.json / js-bench.md")
    ap.add_argument("--no-chromium", action="store_true", help="numpy and Node only (no headless Chromium)")
    args = ap.parse_args()

    from daonet.device import DeviceModel
    from daonet.device.masks import KeyedMasks
    from daonet.server.config import ServerConfig
    from daonet.server.launch import ServerProcess

    built = {m: build(m, args.cache) for m in args.models}
    rows = []
    config = ServerConfig(bundles=[srv for _, srv, _ in built.values()], web=True, port=0, log_level="warning")
    with ServerProcess(config) as server:
        chromium = None if args.no_chromium else Chromium(server.url)
        for name, (dev_dir, _, xs) in built.items():
            device = DeviceModel.load(dev_dir)
            masks = KeyedMasks(KEY, model_version=device.version)
            expected = [device.encode_certified(x, masks)[0].data.hex() for x in xs]
            if chromium:
                chromium.load(name, xs, expected)  # refuses to time unless Chromium's bytes are numpy's
            times: dict[str, list[float]] = {"numpy": [], "node": [], "chromium": []}
            for _ in range(args.rounds):  # interleaved rounds; the fastest round is the least disturbed one
                times["numpy"].append(time_numpy(device, xs, args.seconds))
                times["node"].append(time_node(dev_dir, xs, args.seconds, expected))
                if chromium:
                    times["chromium"].append(chromium.time(args.seconds))
            t_np, t_node = min(times["numpy"]), min(times["node"])
            t_chrome = min(times["chromium"]) if chromium else float("nan")
            k = np.mean([device.encode_certified(x, masks)[1].k for x in xs])
            rows.append({"model": name, "layer": layer_label(device), "n_inputs": int(np.prod(device.input_shape)),
                         "n_outputs": device.n_outputs, "mean_k": round(float(k), 1),
                         "numpy_ms": t_np * 1e3, "node_ms": t_node * 1e3, "chromium_ms": t_chrome * 1e3,
                         "node_vs_numpy": t_node / t_np, "chromium_vs_numpy": t_chrome / t_np})
        if chromium:
            chromium.close()
    node_version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    lines = ["| model | first layer | n -> outputs | k sent | numpy ms | Node ms | Chromium ms | Node / numpy "
             "| Chromium / numpy |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['layer']} | {r['n_inputs']} -> {r['n_outputs']} | {r['mean_k']} | "
                     f"{r['numpy_ms']:.2f} | {r['node_ms']:.2f} | {r['chromium_ms']:.2f} | "
                     f"{r['node_vs_numpy']:.2f}x | {r['chromium_vs_numpy']:.2f}x |")
    table = "\n".join(lines)
    print(table)
    print(f"(encode + certificate + keyed mask per input, fastest of {args.rounds} interleaved rounds; numpy "
          f"{np.__version__}, Node {node_version}, {platform.machine()}, same payload bytes in all three)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "js-bench.json").write_text(json.dumps(rows, indent=2) + "\n")
        (args.out / "js-bench.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
