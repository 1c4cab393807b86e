"""Ray Serve scale-out on a real local Ray instance (2 CPUs, 2 replicas): the same API as the single process.

One deployment for the whole module (starting Ray and two replicas takes ~15 s on 2 cores): the digits,
ECG and MNIST bundles behind API keys, the same body limit as the single-process test server.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import numpy as np
import pytest
from server_cases import (
    API_KEY_CASES,
    API_KEYS,
    BAD_PAYLOADS,
    OCTET,
    PREDICT,
    WRONG_CONTENT_TYPES,
    api_key_hashes,
    send_bad_payload,
)

from daonet.device import Client, DeviceModel, RandomMasks

ray = pytest.importorskip("ray", reason="needs daonet[ray] (make setup installs it)")

from daonet.server.config import ConfigError, ServerConfig  # noqa: E402
from daonet.server.ray_serve import RayOptions, RayService, pack_bundle  # noqa: E402

pytestmark = pytest.mark.slow  # the shared deployment alone (Ray + 2 replicas) takes ~20 s on 2 cores
KEY = {"X-API-Key": API_KEYS["generated"]}
N_MNIST = 200


def test_cli_serve_ray_answers_and_stops_on_sigterm(serve_digits_bundle, make_payload):
    """`daonet serve --ray` for real, in its own process and Ray instance (before this module's Ray starts)."""
    import signal
    import subprocess
    import sys

    from daonet.server.ray_serve import free_port

    port = free_port()
    version = DeviceModel.load(serve_digits_bundle.device).version
    proc = subprocess.Popen([sys.executable, "-c", "from daonet.cli import main; main()", "serve",
                             str(serve_digits_bundle.server), "--ray", "--replicas", "1", "--replica-cpus", "0.5",
                             "--port", str(port), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "daonet on Ray Serve" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline() if proc.stdout else ""
        assert f"http://127.0.0.1:{port}" in line, line
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            assert http.get("/v1/ready").json()["models"] == ["digits-mlp"]
            r = http.post(PREDICT, content=make_payload(version, 256, [1, 5], [0.5, 1.0]), headers=OCTET)
            assert r.status_code == 200 and len(r.json()["probabilities"]) == 10
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0  # deletes the app and stops its Ray instance
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def mnist_run(one_torch_thread):
    """A real MNIST mlp trained on a 6k subset (a few seconds on one thread) and its test images."""
    from daonet.train import TrainConfig, train

    cfg = TrainConfig(dataset="mnist", model="mlp", drop_rate=0.5, epochs=1, n_train=6000, n_test=N_MNIST,
                      eval_draws=1, model_kwargs={"hidden": 256, "hidden2": 64})
    return train(cfg, progress=False)


@pytest.fixture(scope="module")
def mnist_bundle(mnist_run, tmp_path_factory):
    from daonet.exporting import export_model

    root = tmp_path_factory.mktemp("ray-mnist") / "bundle"
    return export_model(mnist_run.model, root, model_id="mnist-mlp", classes=mnist_run.dataset.classes,
                        raw_dtype="uint8")


@pytest.fixture(scope="module")
def bundles(serve_digits_bundle, serve_signal_bundle, mnist_bundle):
    return [serve_digits_bundle.server, serve_signal_bundle.server, mnist_bundle[1]]


@pytest.fixture(scope="module")
def ray_service(bundles, server_body_limit):
    config = ServerConfig(bundles=bundles, port=0, max_body_bytes=server_body_limit, max_batch_size=32,
                          max_wait_ms=2.0, api_key_hashes=api_key_hashes(), torch_threads=1, web=True)
    with RayService(config, RayOptions(replicas=2, num_cpus=2, replica_cpus=0.5)) as service:
        yield service


@pytest.fixture(scope="module")
def single_url(start_server, bundles, server_body_limit):
    """The single-process server with the same bundles and settings (the reference)."""
    config = ServerConfig(bundles=bundles, max_body_bytes=server_body_limit, max_batch_size=32, max_wait_ms=2.0,
                          api_key_hashes=api_key_hashes(), web=True)
    return start_server(config).url


@pytest.fixture(scope="module")
def clients(ray_service, single_url):
    with httpx.Client(base_url=ray_service.url, headers=KEY, timeout=30) as r, \
            httpx.Client(base_url=single_url, headers=KEY, timeout=30) as s:
        yield r, s


@pytest.fixture(scope="module")
def digits_version(serve_digits_bundle) -> str:
    return DeviceModel.load(serve_digits_bundle.device).version


def test_two_replicas_serve_the_same_models(ray_service, clients):
    ray_client, single = clients
    assert ray_service.running_replicas() == 2 and len(ray_service.replica_actor_names()) == 2
    assert ray_client.get("/v1/models").json() == single.get("/v1/models").json()
    assert ray_client.get("/v1/ready").json()["models"] == ["digits-mlp", "ecg5000-cnn1d", "mnist-mlp"]
    assert ray_client.get("/v1/health").json() == {"status": "ok"}
    # --web: the page and the device halves travelled with the server bundles, byte for byte
    index = ray_client.get("/device-bundles/index.json")
    assert index.status_code == 200 and index.json() == single.get("/device-bundles/index.json").json()
    assert ray_client.get("/").text == single.get("/").text
    spec = ray_client.get("/openapi.json").json()
    assert [p for p, ops in spec["paths"].items() if "post" in ops] == ["/v1/models/{model_id}/predict"]


def test_mnist_predictions_equal_the_single_process_server(ray_service, clients, mnist_run, mnist_bundle):
    """Real MNIST test images through the device runtime; the same bytes to both hosts, concurrently."""
    from concurrent.futures import ThreadPoolExecutor

    ray_client, single = clients
    device = DeviceModel.load(mnist_bundle[0])
    x = mnist_run.dataset.x_test[:N_MNIST]
    payloads = [device.encode(x[i], RandomMasks(i)).data for i in range(N_MNIST)]

    def post(args):
        http, data = args
        r = http.post("/v1/models/mnist-mlp/predict", content=data, headers=OCTET)
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(8) as pool:  # concurrent, so @serve.batch forms real batches
        on_ray = list(pool.map(post, [(ray_client, p) for p in payloads]))
    on_single = [post((single, p)) for p in payloads]
    probs_ray = np.array([b["probabilities"] for b in on_ray])
    probs_single = np.array([b["probabilities"] for b in on_single])
    np.testing.assert_allclose(probs_ray, probs_single, atol=1e-5)
    assert [b["label"] for b in on_ray] == [b["label"] for b in on_single]
    assert [b["nnz"] for b in on_ray] == [b["nnz"] for b in on_single]
    accuracy = float(np.mean(probs_ray.argmax(1) == mnist_run.dataset.y_test[:N_MNIST]))
    assert accuracy > 0.7  # a real model, not noise

    # the device client works unchanged against Ray (checks id/version, then sends only payloads)
    with Client(ray_service.url, mnist_bundle[0], api_key=API_KEYS["generated"]) as client:
        preds = client.predict_many(x[:16], concurrency=4)
    assert len(preds) == 16 and all(0 <= p.index < 10 for p in preds)


@pytest.mark.parametrize("case", list(BAD_PAYLOADS))
def test_bad_payload_gets_the_single_process_status(case, clients, digits_version, make_payload):
    ray_client, single = clients
    expected = send_bad_payload(single, case, digits_version, make_payload)
    got = send_bad_payload(ray_client, case, digits_version, make_payload)
    assert got.status_code == expected.status_code == BAD_PAYLOADS[case][1], got.text
    assert got.json() == expected.json()


def test_wrong_content_type_unknown_model_and_endpoint(clients, digits_version, make_payload):
    ray_client, single = clients
    good = make_payload(digits_version, 256, [1, 5], [0.5, 1.0])
    for content_type in WRONG_CONTENT_TYPES:
        headers = {"Content-Type": content_type} if content_type else {}
        got = ray_client.post(PREDICT, content=good, headers=headers)
        assert got.status_code == 415 and got.json()["error"] == "unsupported_media_type", got.text
    for method, path in [("POST", "/v1/models/no-such-model/predict"), ("GET", "/v1/models/no-such-model"),
                         ("GET", "/v1/no-such-endpoint"), ("DELETE", PREDICT)]:
        content = good if method == "POST" else None
        got = ray_client.request(method, path, content=content, headers=OCTET)
        expected = single.request(method, path, content=content, headers=OCTET)
        assert got.status_code == expected.status_code and got.json() == expected.json(), (path, got.text)


def test_body_limits(clients, server_body_limit):
    ray_client, _ = clients
    r = ray_client.post(PREDICT, content=b"\x00" * (server_body_limit + 1), headers=OCTET)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"

    def chunks():
        for _ in range(4):
            yield b"\x00" * (server_body_limit // 2)

    r = ray_client.post(PREDICT, content=chunks(), headers=OCTET)
    assert r.status_code == 413 and "streamed" in r.json()["detail"]


@pytest.mark.parametrize("headers,status", API_KEY_CASES)
def test_api_key(ray_service, digits_version, make_payload, headers, status):
    good = make_payload(digits_version, 256, [1, 5], [0.5, 1.0])
    with httpx.Client(base_url=ray_service.url, timeout=30) as http:
        r = http.post(PREDICT, content=good, headers={**OCTET, **headers})
        assert r.status_code == status, r.text
        if status == 401:
            assert r.json()["error"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
            assert http.get("/v1/models").status_code == 401
        assert http.get("/v1/health").status_code == 200


def test_metrics_answer_from_a_replica(clients, digits_version, make_payload):
    ray_client, _ = clients
    good = make_payload(digits_version, 256, [1, 5], [0.5, 1.0])
    for _ in range(6):
        assert ray_client.post(PREDICT, content=good, headers=OCTET).status_code == 200
    r = ray_client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "daonet_requests_total" in r.text and 'daonet_batch_size_count{model="digits-mlp"}' in r.text


def test_options_are_validated_before_anything_starts(tmp_path):
    with pytest.raises(ConfigError, match="--min-replicas 3 is above --max-replicas 2"):
        RayOptions(min_replicas=3, max_replicas=2).validate()
    with pytest.raises(ConfigError, match="must lie between"):
        RayOptions(replicas=5, min_replicas=1, max_replicas=4).validate()
    with pytest.raises(ConfigError, match="--target-ongoing-requests"):
        RayOptions(target_ongoing_requests=0).validate()
    scaling = RayOptions(replicas=2, min_replicas=1, max_replicas=4, target_ongoing_requests=8).deployment_options()
    assert scaling["autoscaling_config"] == {"initial_replicas": 2, "min_replicas": 1, "max_replicas": 4,
                                             "target_ongoing_requests": 8}
    assert "num_replicas" not in scaling
    assert RayOptions(replicas=3).deployment_options()["num_replicas"] == 3
    with pytest.raises(ConfigError, match="not a server bundle"):
        pack_bundle(tmp_path)


RECOVERY_S = 180  # a bound on "Ray replaces the replica", not a timing claim: a loaded 2-core machine took 60 s


def test_killing_a_replica_fails_only_in_flight_requests(ray_service, mnist_bundle, mnist_run):
    """Kill one replica's actor under a stream of requests: the service keeps answering, Ray starts a new one.

    Only requests in flight on the killed replica may fail, each with a clear 5xx; none may hang.
    """
    device = DeviceModel.load(mnist_bundle[0])
    payloads = [device.encode(mnist_run.dataset.x_test[i], RandomMasks(i)).data for i in range(64)]
    n_clients = 8
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    deadline = time.monotonic() + RECOVERY_S + 30  # bounded: the stream stops by itself

    def stream(k: int) -> None:
        with httpx.Client(base_url=ray_service.url, headers=KEY, timeout=15) as http:
            i = k
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    r = http.post("/v1/models/mnist-mlp/predict", content=payloads[i % 64], headers=OCTET)
                    outcome = str(r.status_code)
                    # Ray's proxy: the replica never answered ("timed out"), or the replica saw the body the
                    # proxy forwarded stall as its peer died ("body_timeout"); the client sent it whole: server-side
                    if r.status_code == 408 and ("timed out" in r.text or "body_timeout" in r.text):
                        outcome = "408 proxy timeout"
                except httpx.TimeoutException:
                    outcome = "hung"
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                with lock:
                    outcomes[outcome] += 1
                i += n_clients

    threads = [threading.Thread(target=stream, args=(k,), daemon=True) for k in range(n_clients)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    before = ray_service.replica_actor_names()
    assert len(before) == 2
    with lock:
        served_before = sum(outcomes.values())
    ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
    killed_at = time.monotonic()
    while time.monotonic() - killed_at < RECOVERY_S:  # Ray's controller notices the dead actor, starts another
        names = ray_service.replica_actor_names()
        if len(names) == 2 and before[0] not in names and ray_service.running_replicas() == 2:
            break
        time.sleep(0.2)
    recovered_s = time.monotonic() - killed_at
    time.sleep(1.0)  # keep streaming on the two replicas again
    stop.set()
    for t in threads:
        t.join(30)
    failed = {k: v for k, v in outcomes.items() if k != "200"}
    print(f"\nfault test: {sum(outcomes.values())} requests ({served_before} before the kill), "
          f"failed {sum(failed.values())} {failed}, replica replaced after {recovered_s:.1f} s")
    assert recovered_s < RECOVERY_S, "Ray did not replace the killed replica"
    assert outcomes["200"] > served_before
    assert "hung" not in failed
    # a clear server-side failure (500, or Ray's own "Request ... timed out" 408), never a daonet 4xx
    assert all(k.startswith("5") or k == "408 proxy timeout" for k in failed), failed
    assert sum(failed.values()) <= n_clients  # at most the requests in flight at the kill
    with httpx.Client(base_url=ray_service.url, headers=KEY, timeout=15) as http:
        assert http.post("/v1/models/mnist-mlp/predict", content=payloads[0], headers=OCTET).status_code == 200


def test_kuberay_manifest_builds_the_app(serve_digits_bundle):
    """deploy/kuberay.yaml's serveConfigV2 names a real builder and args it accepts (bundle path and key swapped)."""
    import importlib
    from pathlib import Path

    import yaml
    from ray.serve import Application

    manifest = yaml.safe_load((Path(__file__).resolve().parents[1] / "deploy" / "kuberay.yaml").read_text())
    assert manifest["kind"] == "RayService" and manifest["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__
    app_spec = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"][0]
    module, name = app_spec["import_path"].split(":")
    build_app = getattr(importlib.import_module(module), name)
    args = dict(app_spec["args"])
    with pytest.raises(ConfigError, match="hash"):  # the placeholder is refused, not served without a key
        build_app({**args, "bundles": [str(serve_digits_bundle.server)]})
    app = build_app({**args, "bundles": [str(serve_digits_bundle.server)], "api_key_hashes": api_key_hashes()})
    assert isinstance(app, Application)
    with pytest.raises(ConfigError, match="unknown daonet app argument"):
        build_app({"bundles": [str(serve_digits_bundle.server)], "replica": 2})
