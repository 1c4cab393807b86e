"""The documentation site builds with warnings as errors, and the code the docs and the README show runs as
written: every fenced block preceded by ``<!-- run: GROUP -->`` is executed (a group's blocks in page order, in
one fresh folder), and each group's output is checked for what the page says it shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = re.compile(r"<!-- run: ([\w-]+) -->\n```(python|bash)\n(.*?)```", re.S)


def runnable_blocks() -> dict[str, list[tuple[str, str, str]]]:
    """``{group: [(page, language, code), ...]}`` over the README and every page under docs/."""
    groups: dict[str, list[tuple[str, str, str]]] = {}
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for group, lang, code in RUNNABLE.findall(page.read_text()):
            groups.setdefault(group, []).append((str(page.relative_to(ROOT)), lang, code))
    return groups


def _number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in output:\n{text[-3000:]}"
    return float(m.group(1))


def _check_readme(out: str, cwd: Path) -> None:
    assert (cwd / "bundles" / "my-ecg" / "device" / "manifest.json").exists()
    assert "quick budget, NOT a privacy claim" in out  # the headline says what a quick audit is
    assert re.search(r"leakage beyond the label: (at least )?[+-][\d.]+ corr", out), out[-2000:]


def _check_own_model(out: str, cwd: Path) -> None:
    assert _number(r"served accuracy: ([\d.]+)", out) >= 0.7  # 5 classes; ~0.58 is the majority class
    assert "what left the device for beat 0:" in out and "of 544 outputs" in out
    assert (cwd / "bundles" / "my-ecg" / "server" / "server_program.pt2").exists()
    assert "best attack" in out and "NOT a privacy claim" in out


def _check_data(out: str, cwd: Path) -> None:
    assert "csv:data/heart,label=diagnosis: signal, input (1, 12), classes ['healthy', 'sick']" in out, out
    assert "npz:data/waves.npz: signal, input (1, 64), classes ['slow', 'fast']" in out
    assert "npz:data/digits8.npz: image, input (1, 8, 8)" in out
    for name in ("heart", "waves", "digits8"):
        assert (cwd / "bundles" / name / "device" / "manifest.json").exists(), name
        assert (cwd / "runs" / name / "metrics.json").exists(), name
    assert (cwd / "reports" / "heart" / "report.html").exists()


def _check_serve(out: str, cwd: Path) -> None:
    assert _number(r"accuracy on 200 test beats: ([\d.]+)", out) > 0.8  # the shipped default: 0.882 audited
    assert _number(r"bytes per request: ([\d.]+)", out) < _number(r"raw input: (\d+)", out)


def _check_audit(out: str, cwd: Path) -> None:
    assert "ecg5000-cnn1d" in out and "leakage beyond the label" in out  # verify's headline of the shipped audit
    assert (cwd / "reports" / "ecg-quick" / "report.html").exists()
    assert (cwd / "reports" / "ecg-quick" / "audit.json").exists()


def _check_deploy(out: str, cwd: Path) -> None:
    assert re.search(r"verified, version [0-9a-f]{16}", out), out
    assert (cwd / "keys" / "vendor.pub").exists() and (cwd / "bundles" / "digits" / "server").is_dir()


CHECKS: dict[str, Callable[[str, Path], None]] = {
    "readme": _check_readme, "own-model": _check_own_model, "data": _check_data, "serve": _check_serve,
    "audit": _check_audit, "deploy": _check_deploy,
}


def test_every_runnable_group_is_checked():
    """A page cannot add runnable code that nothing checks, and no check outlives the code it checks."""
    assert set(runnable_blocks()) == set(CHECKS)


def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict``: broken links and anchors, missing pages and API objects the reference names
    that the code no longer has all fail it."""
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(site)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    library = (site / "reference" / "library" / "index.html").read_text()
    assert "drop_rate" in library and "example_input" in library  # the signature came from the code
    for name in ("mnist-mlp", "ecg5000-cnn1d"):  # the shipped reports are published as they ship, byte for byte
        shipped = ROOT / "src" / "daonet" / "defaults" / name / "audit"
        for f in ("report.html", "audit.json"):
            assert (site / "results" / "shipped" / name / f).read_bytes() == (shipped / f).read_bytes()
    assert "Unreleased" in (site / "changelog" / "index.html").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("group", sorted(CHECKS))
def test_docs_code_runs_as_written(group, tmp_path):
    blocks = runnable_blocks()[group]
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=bin_dir + os.pathsep + env.get("PATH", ""), OMP_NUM_THREADS="1", NO_COLOR="1")
    out = []
    for i, (page, lang, code) in enumerate(blocks):
        script = tmp_path / f"block{i}.{'py' if lang == 'python' else 'sh'}"
        script.write_text(code if lang == "python" else "set -euo pipefail\n" + code)
        cmd = [sys.executable, script.name] if lang == "python" else ["bash", script.name]
        res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        assert res.returncode == 0, f"{page} block {i}:\n{code}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        out.append(res.stdout)
    CHECKS[group]("\n".join(out), tmp_path)
