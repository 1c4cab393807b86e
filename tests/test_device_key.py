"""The device key file: created atomically by racing first starts, and refused when its path is unsafe."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daonet.device.masks import load_or_create_key
from daonet.errors import InputError

SRC = str(Path(__file__).resolve().parents[1] / "src")
RACER = """
import sys
from pathlib import Path
import numpy, daonet.errors  # the heavy imports before the start signal
go = Path(sys.argv[2])
Path(sys.argv[3]).touch()
while not go.exists():
    pass  # spin, so every process is running when the signal comes
from daonet.device.masks import load_or_create_key
print(load_or_create_key(sys.argv[1]).hex())
"""


@pytest.mark.slow
def test_concurrent_first_starts_all_get_the_same_key(tmp_path):
    """8 processes start at once on an empty state directory, 10 times: every one gets the one key.

    Before creation was atomic, a process could read the file another had just created but not yet
    written (seen here in the first round, and by a tester 3-11 times in 120 starts)."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    failures = []
    for round_ in range(10):
        home = tmp_path / f"home{round_}"
        key_path, go = home / ".daonet" / "device_key", tmp_path / f"go{round_}"
        ready = [tmp_path / f"ready{round_}-{i}" for i in range(8)]
        procs = [subprocess.Popen([sys.executable, "-c", RACER, str(key_path), str(go), str(r)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in ready]
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        results = [p.communicate(timeout=60) for p in procs]
        keys = {out.strip() for out, _ in results}
        failures += [err.strip().splitlines()[-1] for p, (_, err) in zip(procs, results, strict=True) if p.returncode]
        assert not failures, failures
        assert len(keys) == 1 and len(keys.pop()) == 64
        assert key_path.read_text().strip() and not [f for f in key_path.parent.iterdir() if f.name != "device_key"]


def test_dangling_symlink_at_the_key_path_is_refused(tmp_path):
    path = tmp_path / "device_key"
    path.symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputError, match="symbolic link"):
        load_or_create_key(path)
    assert not (tmp_path / "nowhere").exists()  # nothing was created through the link


def test_symlink_to_a_valid_key_is_refused(tmp_path):
    real = tmp_path / "real_key"
    load_or_create_key(real)
    path = tmp_path / "device_key"
    path.symlink_to(real)
    with pytest.raises(InputError, match="symbolic link"):
        load_or_create_key(path)


def test_directory_at_the_key_path_is_refused(tmp_path):
    path = tmp_path / "device_key"
    path.mkdir()
    with pytest.raises(InputError, match="is a directory"):
        load_or_create_key(path)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_key_directory_writable_by_others_is_refused(tmp_path, mode):
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, mode)
    with pytest.raises(InputError, match="chmod 700"):
        load_or_create_key(state / "device_key")
    os.chmod(state, 0o700)
    assert len(load_or_create_key(state / "device_key")) == 32
