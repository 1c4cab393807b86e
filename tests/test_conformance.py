"""Both device runtimes against one corpus of good and bad bundles (tests/conformance/corpus.py).

Every case is loaded by the numpy runtime (``DeviceModel.load``) and by the JavaScript one (``loadDevice`` in
Node); each must give the case's expected outcome: accept, and then the same payload bytes for the case's real
test input under the same device key, or refuse with the expected error class and words. So what one runtime
checks or refuses (version bound to content, signatures by trusted keys, schema ranges and types, weight
hashes, Python's exact JSON reading), the other does too.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conformance.corpus import PROBE_KEY, Case, build_corpus, load_trusted
from test_js_device import node_binary

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "src" / "daonet" / "web" / "daonet-device.mjs"
RUNNER = ROOT / "tests" / "js" / "conformance_runner.mjs"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[Case]]:
    out = tmp_path_factory.mktemp("conformance")
    return out, build_corpus(out)


def python_outcome(c: Case) -> dict:
    """What the numpy runtime does with one case (the same fields as the JS runner prints)."""
    from daonet.device import DeviceModel
    from daonet.device.masks import KeyedMasks
    from daonet.errors import DaonetError

    try:
        device = DeviceModel.load(c.bundle, public_keys=load_trusted(c.keys))
    except DaonetError as exc:
        return {"name": c.name, "accepted": False, "error": type(exc).__name__, "message": str(exc)}
    out: dict = {"name": c.name, "accepted": True}
    if c.probe:
        x = np.asarray(c.probe["input"], dtype=c.probe["dtype"])
        masks = KeyedMasks(PROBE_KEY, model_version=device.version)  # what a client sends: policy applied
        out["payload"] = device.encode_certified(x, masks)[0].data.hex()
    return out


def check(c: Case, got: dict, runtime: str) -> None:
    assert got["name"] == c.name
    if c.expect == "accept":
        assert got["accepted"], f"{runtime} refused {c.name}: {got.get('error')}: {got.get('message')}"
        return
    assert not got["accepted"], f"{runtime} accepted {c.name}, which must be refused ({c.message})"
    assert got["error"] == c.error, f"{runtime} refused {c.name} with {got['error']} ({got['message']}), not {c.error}"
    assert c.message in got["message"], f"{runtime} refused {c.name} without {c.message!r}: {got['message']}"


def test_corpus_covers_both_outcomes_and_every_error_class(corpus):
    _, cases = corpus
    assert len({c.name for c in cases}) == len(cases)
    outcomes = {c.expect for c in cases}
    classes = {c.error for c in cases if c.expect == "refuse"}
    assert outcomes == {"accept", "refuse"} and classes == {"BundleError", "ManifestError", "DaonetError"}


def test_python_runtime_follows_the_corpus(corpus):
    _, cases = corpus
    for c in cases:
        check(c, python_outcome(c), "numpy")


def test_js_runtime_follows_the_corpus_with_pythons_bytes(corpus):
    node = node_binary()
    if node is None:
        pytest.skip("Node.js >= 18 is not installed (apt-get install nodejs): the JS device runtime cannot run")
    out, cases = corpus
    proc = subprocess.run([node, str(RUNNER), str(MODULE), str(out / "cases.json"), PROBE_KEY.hex()],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == len(cases)
    compared = 0
    for c, got in zip(cases, results, strict=True):
        check(c, got, "JavaScript")
        if c.expect == "accept" and c.probe:
            expected = python_outcome(c)["payload"]
            assert got["payload"] == expected, f"{c.name}: the JS payload differs from numpy's"
            compared += 1
    assert compared >= 5
