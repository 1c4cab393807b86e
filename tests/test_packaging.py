"""The package as users get it: an sdist and a wheel built from the repository, the wheel installed into a
fresh virtual environment with the device dependencies only, and used from outside the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(".venv", ".git", "runs", "bundles", "reports", ".daonet-cache", "node_modules",
                                "__pycache__", "*.egg-info", "build", "dist", "site", ".pytest_cache", ".ruff_cache")


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True,
         timeout: int = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert res.returncode == 0, f"{cmd}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """``python -m build``: the sdist, then the wheel built from that sdist (so the sdist is complete)."""
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    out = tmp / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)], cwd=tmp)
    return out


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory, dist) -> Path:
    """A fresh venv with the wheel and the device dependencies only (numpy, httpx, safetensors)."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv.parent)
    py = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "-c", str(ROOT / "constraints.txt")]
    _run([*pip, "--no-deps", str(next(dist.glob("*.whl")))], cwd=venv.parent)
    _run([*pip, "numpy", "httpx", "safetensors"], cwd=venv.parent)
    return venv


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {"OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sdist_and_wheel_contents(dist):
    sdists, wheels = list(dist.glob("daonet-*.tar.gz")), list(dist.glob("daonet-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    for needed in ("daonet/device/runtime.py", "daonet/launcher.py", "daonet/convert.py", "daonet/web/index.html"):
        assert needed in names, needed
    assert not any(n.startswith("tests/") for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheels[0]).read(meta).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    assert sorted(r.split()[1].split(">")[0].split("<")[0] for r in base) == ["httpx", "numpy", "safetensors"]
    assert all("==" not in r.split(";")[0] for r in requires)  # ranges here; exact pins only in constraints.txt
    for extra in ("cli", "server", "train", "bench", "ray"):
        assert f"Provides-Extra: {extra}" in metadata
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "daonet = daonet.launcher:main" in zipfile.ZipFile(wheels[0]).read(entry).decode()


@pytest.mark.slow
def test_device_only_install_runs_the_runtime(device_venv, serve_digits_bundle, digits, tmp_path):
    np.save(tmp_path / "digits.npy", np.round(digits.x_test[:5] * 255).astype(np.uint8))
    code = f"""
import sys, numpy as np, daonet
from daonet.device import DeviceModel, KeyedMasks, RandomMasks
assert 'torch' not in sys.modules and daonet.__file__.startswith({str(device_venv)!r}), daonet.__file__
try:
    import torch
    raise SystemExit('torch is installed in the device-only venv')
except ModuleNotFoundError:
    pass
device = DeviceModel.load({str(serve_digits_bundle.device)!r})
x = np.load('digits.npy')
payload = device.encode(x[0], RandomMasks(seed=0))
assert 0 < payload.nnz < device.n_outputs and payload.data[:4] == b'DAO1'
again = DeviceModel.load({str(serve_digits_bundle.device)!r}).encode(x[0], RandomMasks(seed=0))
assert again.data == payload.data
print('encoded', len(payload.data), 'bytes', payload.nnz, 'of', device.n_outputs)
"""
    res = _run([str(device_venv / "bin" / "python"), "-c", code], cwd=tmp_path, env=_clean_env())
    assert "encoded" in res.stdout
    res = _run([str(device_venv / "bin" / "daonet"), "train", "--dataset", "digits"], cwd=tmp_path,
               env=_clean_env(), check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "pip install 'daonet[cli]'" in res.stderr and "'daonet[train]'" in res.stderr


@pytest.mark.slow
def test_cli_extra_without_torch(device_venv, serve_digits_bundle, start_server, digits, tmp_path):
    """With [cli] but no torch: train/serve name their extra; `daonet predict` (device side) works against a
    real server on loopback."""
    from daonet.server.config import ServerConfig

    py = device_venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "-c", str(ROOT / "constraints.txt"),
          "typer", "click", "rich", "pillow"], cwd=tmp_path)
    daonet_cmd = str(device_venv / "bin" / "daonet")
    env = _clean_env()
    res = _run([daonet_cmd, "train", "--dataset", "digits"], cwd=tmp_path, env=env, check=False)
    assert res.returncode == 2 and "`daonet train` needs torch" in res.stderr
    assert "pip install 'daonet[train]'" in res.stderr
    res = _run([daonet_cmd, "serve", str(serve_digits_bundle.server)], cwd=tmp_path, env=env, check=False)
    assert res.returncode == 2 and "pip install 'daonet[server]'" in res.stderr
    assert "predict" in _run([daonet_cmd, "--help"], cwd=tmp_path, env=env).stdout
    server = start_server(ServerConfig(bundles=[serve_digits_bundle.server]))
    np.save(tmp_path / "digits.npy", np.round(digits.x_test[:4] * 255).astype(np.uint8))
    res = _run([daonet_cmd, "predict", "digits.npy", "--server", server.url, "--bundle",
                str(serve_digits_bundle.device), "--json"], cwd=tmp_path, env=env)
    assert len([line for line in res.stdout.splitlines() if line.startswith('{"input"')]) == 4


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory, dist) -> Path:
    """A fresh venv with the built wheel installed (``--no-deps``) and this environment's packages visible
    behind it (a ``.pth`` line, so nothing is downloaded). That directory's own ``.pth`` files are not run, so
    the checkout's editable daonet stays out: ``import daonet`` is the wheel's."""
    import site
    import sysconfig

    venv = tmp_path_factory.mktemp("wheel-venv") / "v"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv.parent)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
          str(next(dist.glob("*.whl")))], cwd=venv.parent)
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=venv.parent).stdout.strip())
    ours = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (purelib / "zz-outer-env.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
    return venv


@pytest.mark.slow
def test_installed_wheel_verifies_the_shipped_defaults(wheel_venv, tmp_path):
    """The Install section's check, from the installed wheel and outside the source tree: the shipped defaults,
    their signed audit reports and the project's key travel in the wheel, and `daonet verify` passes on them
    (and refuses a copy with one flipped weight byte, so the check is real)."""
    env = _clean_env()
    py, daonet_cmd = str(wheel_venv / "bin" / "python"), str(wheel_venv / "bin" / "daonet")
    where = _run([py, "-c", "import daonet, daonet.defaults as d; print(daonet.__file__); "
                  "print(d.default_bundle('mnist').root)"], cwd=tmp_path, env=env).stdout.split()
    assert all(p.startswith(str(wheel_venv)) for p in where), where  # the wheel's files, not the checkout's
    for name, model_id in (("mnist", "mnist-mlp"), ("ecg5000", "ecg5000-cnn1d")):
        root = _run([py, "-c", f"from daonet.defaults import default_bundle; print(default_bundle({name!r}).root)"],
                    cwd=tmp_path, env=env).stdout.strip()
        res = _run([daonet_cmd, "verify", root], cwd=tmp_path, env=env)
        assert f"verified {model_id} version" in res.stdout and "leakage beyond the label" in res.stdout, res.stdout
        shipped = ROOT / "src" / "daonet" / "defaults" / model_id / "audit" / "audit.json"
        assert (Path(root) / "audit" / "audit.json").read_bytes() == shipped.read_bytes()
    tampered = tmp_path / "tampered"
    shutil.copytree(where[1], tampered)
    weights = next((tampered / "device").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    res = _run([daonet_cmd, "verify", str(tampered)], cwd=tmp_path, env=env, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stdout + res.stderr
