"""The two worked examples in examples/ run as written (small sizes); the docs' and the README's code blocks run in
tests/test_docs.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, timeout: int = 600) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


def _number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in output:\n{text}"
    return float(m.group(1))


@pytest.mark.slow
def test_example_ecg_resnet_small(tmp_path):
    out = _run([str(ROOT / "examples" / "ecg_resnet.py"), "--small", "--out", str(tmp_path)], tmp_path)
    assert "device layer: stem (Conv1d)" in out
    assert _number(r"test accuracy ([\d.]+) with dropping on", out) > 0.7
    assert _number(r"served 50 beats over HTTP: accuracy ([\d.]+)", out) > 0.6
    assert "audit rmle" in out and (tmp_path / "audit" / "report.html").exists()


@pytest.mark.slow
def test_example_mnist_finetune_small(tmp_path):
    out = _run([str(ROOT / "examples" / "mnist_finetune.py"), "--small", "--out", str(tmp_path)], tmp_path)
    before = _number(r"pretrained ([\d.]+)", out)
    split = _number(r"split at p=0.75 ([\d.]+)", out)
    after = _number(r"fine-tuned ([\d.]+)", out)
    assert before > 0.85 and after > split + 0.1  # fine-tuning under dropping recovers accuracy
    assert _number(r"served 50 images over HTTP: accuracy ([\d.]+)", out) > 0.6
    assert (tmp_path / "pretrained.pt").exists() and (tmp_path / "audit" / "report.html").exists()
