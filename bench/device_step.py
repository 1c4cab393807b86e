"""Device step benchmark: the reference device step next to the fast one, in one run, on one core.

    python bench/device_step.py --out reports/device-step            # the demo's MNIST model (trained once)
    python bench/device_step.py --bundle bundles/mnist --inputs x.npy  # any dense bundle, inputs as .npy
    python bench/device_step.py --kinds /tmp/kinds --n 20 --repeats 3  # every layer kind: encode vs certified
    python bench/device_step.py --batch --n 32 --repeats 3            # encode_many vs one by one
    python bench/device_step.py --kinds /tmp/kinds --old 214f559 --n 40 # the certificate step: an old revision vs now

Both paths run in the same process on the same inputs and masks, interleaved (reference, fast, reference,
...), so machine noise hits both alike; the figure that matters is the ratio. The fast path must give the
same bytes: every payload is compared, and a mismatch fails the run.

* reference: every first-layer output in float64 then the mask (``DeviceModel.fast_step = False``); the
  certificate's Gram matrix as a k×k×n product (``FirstLayerSystem.use_gram = False``).
* fast: mask first, a float32 screen over the input's non-zero values, float64 only for the kept outputs
  the screen cannot rule out; the Gram matrix looked up in a precomputed ``W Wᵀ``.

``encode`` is the plain step; ``encode_certified`` adds the device's privacy certificate and policy (what
``daonet.device.Client`` runs per request).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core, as on a phone (set before numpy loads)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from daonet.device import DeviceModel, RandomMasks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _inputs(path: Path | None, n: int) -> np.ndarray:
    if path is not None:
        return np.load(path)[:n]
    from daonet.data import load_dataset

    return (load_dataset("mnist").x_test[:n] * 255).round().astype(np.uint8)  # as a device holds pixels


def _bundle(path: Path | None) -> Path:
    if path is not None:
        return path
    from daonet.studies.demo import DEFAULT_CACHE, ensure_bundles

    return ensure_bundles(DEFAULT_CACHE)[0]


def _time(fn: Any, xs: np.ndarray, seed: int) -> tuple[float, list[bytes]]:
    """Mean µs per call over ``xs`` (one pass), and the payloads it made."""
    masks = RandomMasks(seed)
    out: list[bytes] = []
    t0 = time.perf_counter()
    for x in xs:
        out.append(fn(x, masks))
    return (time.perf_counter() - t0) / len(xs) * 1e6, out


def _stages(device: DeviceModel, xs: np.ndarray) -> dict[str, float]:
    """Where the fast certified step spends its time, stage by stage in the step's own order (µs per input)."""
    from daonet.device.certificate import apply_policy

    masks, policy, mu, system = RandomMasks(0), device.policy, device.public_mean, device.system
    acc = dict.fromkeys(("validate", "first_layer_and_mask", "certificate_and_policy", "wire"), 0.0)
    for x in xs:
        t0 = time.perf_counter()
        xb = device.validate(x)
        t1 = time.perf_counter()
        row = device._drop(xb, masks, None)[0]
        t2 = time.perf_counter()
        sent, cert = apply_policy(system, xb[0], device._as_sent(row), policy, mu)
        t3 = time.perf_counter()
        device._payload(sent, cert)
        t4 = time.perf_counter()
        for key, dt in zip(acc, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            acc[key] += dt
    return {k: round(v / len(xs) * 1e6, 1) for k, v in acc.items()}


def run(bundle: Path, xs: np.ndarray, repeats: int) -> dict[str, Any]:
    device = DeviceModel.load(bundle / "device" if (bundle / "device").is_dir() else bundle)
    if device.kind != "dense":
        raise SystemExit(f"{bundle}: the fast step covers dense first layers; this one is {device.kind}")
    system = device.system
    _ = device._screen, system.gram  # built once per model (load time), not per request

    def encode(x: np.ndarray, masks: RandomMasks) -> bytes:
        return device.encode(x, masks).data

    def encode_certified(x: np.ndarray, masks: RandomMasks) -> bytes:
        return device.encode_certified(x, masks)[0].data

    def use(fast: bool) -> None:
        device.fast_step = fast
        system.use_gram = fast

    results: dict[str, Any] = {}
    for name, fn in (("encode", encode), ("encode_certified", encode_certified)):
        times: dict[str, list[float]] = {"reference": [], "fast": []}
        for r in range(repeats + 1):  # the first pass warms caches and is not counted
            for path in ("reference", "fast"):
                use(path == "fast")
                us, payloads = _time(fn, xs, seed=r)
                if r:
                    times[path].append(us)
                if path == "reference":
                    ref_payloads = payloads
                elif payloads != ref_payloads:
                    bad = sum(a != b for a, b in zip(payloads, ref_payloads, strict=True))
                    raise SystemExit(f"{name}: the fast step changed {bad} of {len(xs)} payloads")
        ref, fast = statistics.median(times["reference"]), statistics.median(times["fast"])
        results[name] = {"reference_us": round(ref, 1), "fast_us": round(fast, 1),
                         "speedup": round(ref / fast, 2), "passes": repeats}
    use(True)
    _stages(device, xs)  # warm
    stages = _stages(device, xs)
    k = [device.encode(x, RandomMasks(0)).nnz for x in xs]
    return {
        "bundle": str(bundle), "model_id": device.model_id, "version": device.version,
        "n_inputs": int(len(xs)), "n_outputs": device.n_outputs, "input_size": int(np.prod(device.input_shape)),
        "drop_rate": device.drop_rate, "mean_sent": round(float(np.mean(k)), 1), "results": results,
        "fast_certified_stages_us": stages,
        "identical_payloads": True,
        "environment": {"python": sys.version.split()[0], "numpy": np.__version__, "machine": platform.machine(),
                        "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
                        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


# -- every layer kind: plain encode vs certified encode (the certificate's cost), fast vs reference ---------------
KIND_MODELS = {  # name: (data set, arch, drop rate, model kwargs, device layers); trained 1 epoch on real data
    "conv2d-patchify": ("mnist", "cnn", 0.5, {"stem": 16, "patch": 4, "width": 16}, 1),
    "conv2d-overlap": ("mnist", "cnn", 0.9, {"stem": 8, "patch": 5, "stride": 3, "width": 16}, 1),
    "conv1d-overlap (ECG5000, kernel 8 stride 4)": ("ecg5000", "cnn1d", 0.9, {"stem": 32, "patch": 8, "stride": 4,
                                                                              "width": 32}, 1),
    "conv1d FordA (length 500, kernel 10 stride 5)": ("ucr:FordA", "cnn1d", 0.5, {"stem": 32, "patch": 10,
                                                                                  "stride": 5, "width": 32}, 1),
    "conv1d FordA p = 0.9 (the same layer, dropping more)": ("ucr:FordA", "cnn1d", 0.9, {
        "stem": 32, "patch": 10, "stride": 5, "width": 32}, 1),
    "dense + device block": ("mnist", "mlp", 0.5, {"hidden": 256, "hidden2": 64}, 2),
    "conv1d + Gaussian mechanism (ECG5000, epsilon 4096, p 0)": ("ecg5000", "cnn1d", 0.0, {"ldp_epsilon": 4096.0}, 1),
}
SHIPPED = {"dense (shipped mnist-mlp)": ("mnist", "mnist"), "conv1d-patchify (shipped ecg5000-cnn1d)": ("ecg5000",
                                                                                                         "ecg5000")}


def _kind_bundles(cache: Path) -> dict[str, tuple[Path, str]]:
    """Every layer kind's device bundle and data set: the shipped defaults, and small models trained once."""
    from daonet.defaults import default_bundle

    out = {name: (default_bundle(key).root / "device", ds) for name, (key, ds) in SHIPPED.items()}
    for name, (ds_name, arch, rate, kw, layers) in KIND_MODELS.items():
        path = cache / re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")
        if not (path / "device" / "manifest.json").exists():
            import torch

            from daonet.exporting import export_model
            from daonet.train import TrainConfig, train

            torch.set_num_threads(1)
            res = train(TrainConfig(dataset=ds_name, model=arch, drop_rate=rate, epochs=1, device_layers=layers,
                                    model_kwargs=kw), progress=False)
            export_model(res.model, path, model_id=path.name, classes=res.dataset.classes,
                         raw_dtype=res.dataset.info.get("raw_dtype", "float32"))
        out[name] = (path / "device", ds_name)
    return out


def run_kinds(cache: Path, n: int, n_reference: int, repeats: int) -> dict[str, Any]:
    """Per layer kind, in one run, interleaved: plain ``encode``, ``encode_certified`` (the batched certificate and
    policy) and the reference certificate (on the first ``n_reference`` inputs: it can take a second each); the
    certified payloads of both paths must be identical."""
    from daonet.data import load_dataset

    rows: dict[str, Any] = {}
    for name, (path, ds_name) in _kind_bundles(cache).items():
        device = DeviceModel.load(path)
        xs = load_dataset(ds_name).x_test[:n].astype(np.float32)
        if device.raw_dtype == "uint8":
            xs = (xs * 255).round().astype(np.uint8)
        times: dict[str, list[float]] = {"encode": [], "certified": [], "reference": []}
        sent: list[int] = []
        dropped: list[int] = []
        for r in range(repeats + 1):  # the first pass warms caches and is not counted
            for path_name in times:
                if device.is_linear:
                    device.system.fast = path_name != "reference"
                inputs = xs[:n_reference] if path_name == "reference" else xs
                masks = RandomMasks(r)
                t0 = time.perf_counter()
                if path_name == "encode":
                    out = [device.encode(x, masks).data for x in inputs]
                else:
                    pairs = [device.encode_certified(x, masks) for x in inputs]
                    out = [p.data for p, _ in pairs]
                us = (time.perf_counter() - t0) / len(inputs) * 1e6
                if r:
                    times[path_name].append(us)
                if path_name == "certified":
                    fast_out = out
                    sent, dropped = [c.k for _, c in pairs], [c.dropped_by_policy for _, c in pairs]
                if path_name == "reference" and out != fast_out[:n_reference]:
                    raise SystemExit(f"{name}: the batched certificate changed what is sent")
        if device.is_linear:
            device.system.fast = True
        med = {k: statistics.median(v) for k, v in times.items()}
        rows[name] = {"kind": device.kind, "block": not device.is_linear, "n_outputs": device.n_outputs,
                      "input_size": int(np.prod(device.input_shape)), "drop_rate": device.drop_rate,
                      "mean_sent": round(float(np.mean(sent)), 1), "mean_dropped_by_policy": round(
                          float(np.mean(dropped)), 1),
                      "encode_us": round(med["encode"], 1), "certified_us": round(med["certified"], 1),
                      "reference_certified_us": round(med["reference"], 1),
                      "certified_over_encode": round(med["certified"] / med["encode"], 2),
                      "reference_over_certified": round(med["reference"] / med["certified"], 1)}
        print(f"{name:48s} encode {med['encode']:9.0f} µs  certified {med['certified']:9.0f} µs  "
              f"({rows[name]['certified_over_encode']:6.2f}x)  reference certified {med['reference']:10.0f} µs  "
              f"(fast {rows[name]['reference_over_certified']:.1f}x faster)", flush=True)
    return {"kinds": rows, "n_inputs": n, "n_reference": n_reference, "passes": repeats,
            "loadavg": list(os.getloadavg()), "identical_payloads": True,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}


def _old_certificate(rev: str, where: Path) -> Any:
    """``daonet.device.certificate`` as it was at revision ``rev`` (a git worktree under ``where``), loaded beside
    this checkout's as ``daonet.device._certificate_old`` (its relative imports resolve to this checkout's
    package: compare revisions whose certificate module imports nothing that changed since)."""
    import importlib.util

    from audit_speed import worktree  # the same checkout of an old revision as the audit comparison

    spec = importlib.util.spec_from_file_location("daonet.device._certificate_old",
                                                  worktree(rev, where) / "daonet" / "device" / "certificate.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"{rev}: no daonet/device/certificate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_old_vs_new(cache: Path, rev: str, n: int, repeats: int) -> dict[str, Any]:
    """The certificate and policy step (``apply_policy``: what the certificate work costs per request) of revision
    ``rev`` and of this checkout, per linear layer kind, in one process, interleaved pass by pass on the same
    requests; the kept outputs must be identical."""
    from daonet.data import load_dataset
    from daonet.device import certificate as new

    tmp = Path(tempfile.mkdtemp(prefix="daonet-old-certificate-"))
    rows: dict[str, Any] = {}
    try:
        old = _old_certificate(rev, tmp / "tree")
        for name, (path, ds_name) in _kind_bundles(cache).items():
            device = DeviceModel.load(path)
            if not device.is_linear or device.noise is not None:
                continue  # no algebraic certificate (a block, or the Gaussian mechanism: no policy is applied)
            xs = load_dataset(ds_name).x_test[:n].astype(np.float32)
            if device.raw_dtype == "uint8":
                xs = (xs * 255).round().astype(np.uint8)
            masks = RandomMasks(0)
            requests = []
            for x in xs:
                xb = device.validate(x)
                requests.append((xb[0], device._as_sent(device._drop(xb, masks, None)[0])))
            systems = {"old": (old, old.FirstLayerSystem(device)), "new": (new, device.system)}
            times: dict[str, list[float]] = {"old": [], "new": []}
            for r in range(repeats + 1):  # the first pass builds each side's tables and is not counted
                kept = {}
                for side, (module, system) in systems.items():
                    t0 = time.perf_counter()
                    kept[side] = [module.apply_policy(system, x, sent, device.policy, device.public_mean)[0]
                                  for x, sent in requests]
                    if r:
                        times[side].append((time.perf_counter() - t0) / len(requests) * 1e6)
                if any(not np.array_equal(a, b) for a, b in zip(kept["old"], kept["new"], strict=True)):
                    raise SystemExit(f"{name}: {rev} and this checkout keep different outputs")
            med = {k: statistics.median(v) for k, v in times.items()}
            rows[name] = {"old_us": round(med["old"], 1), "new_us": round(med["new"], 1),
                          "old_over_new": round(med["old"] / med["new"], 2)}
            print(f"{name:52s} certificate + policy: {rev} {med['old']:9.0f} µs   this checkout {med['new']:9.0f} µs"
                  f"   ({rows[name]['old_over_new']:.2f}x)", flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "tree")],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"old_revision": rev, "kinds": rows, "n_inputs": n, "passes": repeats,
            "loadavg": list(os.getloadavg()), "identical_outputs": True,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}


def _batch_steps(device: DeviceModel, xs: np.ndarray, masks: Any) -> dict[str, Any]:
    """The four ways to send ``xs``: one by one or as a batch, plain or certified (each returns the bytes)."""
    return {"encode": lambda: [device.encode(x, masks).data for x in xs],
            "encode_many": lambda: [p.data for p in device.encode_many(xs, masks)],
            "encode_certified": lambda: [device.encode_certified(x, masks)[0].data for x in xs],
            "encode_many_certified": lambda: [p.data for p, _ in device.encode_many_certified(xs, masks)]}


def run_batch(n: int, repeats: int) -> dict[str, Any]:
    """The shipped defaults, ``n`` readings buffered: ``encode_many`` / ``encode_many_certified`` against one call
    per reading, interleaved, with :class:`KeyedMasks` so both must give the same bytes (checked)."""
    from daonet.data import load_dataset
    from daonet.defaults import default_bundle
    from daonet.device import KeyedMasks

    out: dict[str, Any] = {}
    for name in ("mnist", "ecg5000"):
        device = DeviceModel.load(default_bundle(name).root / "device")
        xs = load_dataset(name).x_test[:n].astype(np.float32)
        if device.raw_dtype == "uint8":
            xs = (xs * 255).round().astype(np.uint8)
        masks = KeyedMasks(key=b"bench-key-" * 4, model_version=device.version)
        steps = _batch_steps(device, xs, masks)
        times: dict[str, list[float]] = {k: [] for k in steps}
        for r in range(repeats + 1):
            got = {}
            for k, fn in steps.items():
                t0 = time.perf_counter()
                got[k] = fn()
                if r:
                    times[k].append((time.perf_counter() - t0) / n * 1e6)
            if got["encode"] != got["encode_many"] or got["encode_certified"] != got["encode_many_certified"]:
                raise SystemExit(f"{name}: the batch form changed the bytes")
        med = {k: round(statistics.median(v), 1) for k, v in times.items()}
        out[name] = {**{f"{k}_us": v for k, v in med.items()},
                     "one_by_one_over_many": round(med["encode"] / med["encode_many"], 2),
                     "one_by_one_over_many_certified": round(med["encode_certified"] / med["encode_many_certified"], 2)}
        print(f"{name:8s} " + "  ".join(f"{k} {v:.0f} µs" for k, v in med.items())
              + f"  one-by-one / batch: {out[name]['one_by_one_over_many']}x plain, "
                f"{out[name]['one_by_one_over_many_certified']}x certified", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, help="bundle (root or device/); default: the demo's cached MNIST model")
    ap.add_argument("--inputs", type=Path, help=".npy of raw inputs; default: MNIST test images as uint8")
    ap.add_argument("--n", type=int, default=500, help="inputs per pass")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes per path")
    ap.add_argument("--out", type=Path, help="write device_step.json here")
    ap.add_argument("--kinds", type=Path, metavar="CACHE",
                    help="every layer kind instead (bundles trained once into CACHE): encode vs encode_certified")
    ap.add_argument("--n-reference", type=int, default=5, help="--kinds: inputs for the (slow) reference path")
    ap.add_argument("--batch", action="store_true", help="encode_many(_certified) vs one by one (shipped defaults)")
    ap.add_argument("--old", metavar="REV", help="with --kinds: the certificate and policy step of git revision REV "
                                                 "beside this checkout's, interleaved in one process")
    args = ap.parse_args()
    if args.old is not None:
        if args.kinds is None:
            ap.error("--old compares the certificate per layer kind: give --kinds CACHE too")
        result = run_old_vs_new(args.kinds, args.old, args.n, args.repeats)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "device_step_old_vs_new.json").write_text(json.dumps(result, indent=2) + "\n")
        return
    if args.batch:
        run_batch(args.n, args.repeats)
        return
    if args.kinds is not None:
        kinds = run_kinds(args.kinds, args.n, args.n_reference, args.repeats)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "device_step_kinds.json").write_text(json.dumps(kinds, indent=2) + "\n")
        return
    report = run(_bundle(args.bundle), _inputs(args.inputs, args.n), args.repeats)
    for name, r in report["results"].items():
        print(f"{name:17s} reference {r['reference_us']:8.1f} µs   fast {r['fast_us']:8.1f} µs   "
              f"speedup {r['speedup']:.2f}x   (median of {r['passes']} passes over {report['n_inputs']} inputs)")
    print("fast certified step by stage (µs): " + ", ".join(f"{k} {v}" for k, v in
                                                        report["fast_certified_stages_us"].items()))
    print(f"payloads identical; mean {report['mean_sent']} of {report['n_outputs']} outputs sent, "
          f"p={report['drop_rate']}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "device_step.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
