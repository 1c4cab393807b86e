"""The fast device step (one dense input: mask first, float32 screen, float64 for kept outputs) gives exactly
the reference step's bytes, and the Gram-lookup certificate equals the reference one."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from daonet.device import DeviceModel, KeyedMasks, RandomMasks
from daonet.device.certificate import PrivacyPolicy
from daonet.exporting import export_model


def _both(device: DeviceModel, fn):
    """``fn()`` on the reference step, then on the fast one."""
    out = []
    for fast in (False, True):
        device.fast_step = fast
        device.system.use_gram = fast
        out.append(fn())
    device.fast_step = True
    device.system.use_gram = True
    return out


@pytest.fixture(scope="module")
def variants(serve_digits_run, tmp_path_factory, one_torch_thread):
    """The digits mlp (p=0.5) as exported, as float16 on the wire, and retrained with quantization / noise."""
    from daonet.train import train

    root = tmp_path_factory.mktemp("device-step")
    run = serve_digits_run
    out = {}
    for name, value_dtype in (("plain", "float32"), ("half", "float16")):
        dev, _ = export_model(run.model, root / name, model_id="d", classes=run.dataset.classes, raw_dtype="uint8",
                              value_dtype=value_dtype)
        out[name] = DeviceModel.load(dev)
    for name, extra in (("quantized", {"quantize_levels": 3}), ("noisy", {"noise_std": 0.3})):
        cfg = replace(run.config, epochs=1, **extra)
        res = train(cfg, ds=run.dataset, progress=False)
        dev, _ = export_model(res.model, root / name, model_id="d", classes=res.dataset.classes, raw_dtype="uint8")
        out[name] = DeviceModel.load(dev)
    return out, run.dataset


@pytest.mark.parametrize("name", ["plain", "half", "quantized", "noisy"])
def test_fast_step_sends_the_reference_bytes(variants, name):
    devices, ds = variants
    device = devices[name]
    xs = (ds.x_test[:150] * 255).round().astype(np.uint8)
    for seed in (0, 1):
        ref, fast = _both(device, lambda seed=seed: [device.encode(x, RandomMasks(seed)).data for x in xs])
        assert ref == fast
    key = KeyedMasks(key=b"k" * 32, model_version=device.version)
    ref, fast = _both(device, lambda: [device.encode(x, key).data for x in xs[:40]])
    assert ref == fast
    everything = np.ones(device.n_outputs, dtype=bool)  # an explicit mask: every output kept
    ref, fast = _both(device, lambda: [device.drop(x, RandomMasks(5), mask=everything) for x in xs[:40]])
    np.testing.assert_array_equal(np.concatenate(ref), np.concatenate(fast))
    if device.noise is None:  # unmasked and without noise: all of h
        np.testing.assert_array_equal(np.concatenate(fast), device.activations(xs[:40]))


def test_fast_certificate_matches_the_reference(variants):
    devices, ds = variants
    device = devices["plain"]
    xs = (ds.x_test[:60] * 255).round().astype(np.uint8)
    for policy in (PrivacyPolicy(), PrivacyPolicy(max_revealed_energy=0.2)):
        ref, fast = _both(device, lambda policy=policy: [device.encode_certified(x, RandomMasks(3), policy=policy)
                                                         for x in xs])
        assert [p.data for p, _ in ref] == [p.data for p, _ in fast]
        for (_, a), (_, b) in zip(ref, fast, strict=True):
            assert (a.k, a.rank, a.identifiable, a.policy_ok) == (b.k, b.rank, b.identifiable, b.policy_ok)
            assert a.revealed_energy == pytest.approx(b.revealed_energy, abs=1e-9)
            assert a.max_leverage == pytest.approx(b.max_leverage, abs=1e-9)
    assert any(c.dropped_by_policy for _, c in fast)  # the 0.2 bound did bite on some requests
