"""Fixtures for the client tests: a running Corral and its instances, reached over loopback.

The suite drives the official `openai`, `anthropic` and `ollama` clients, unchanged, against a
Corral that already runs (`src-tauri/tests/clients.rs` starts one and runs this suite). By hand:

    CORRAL_BASE_URL=http://127.0.0.1:8080 CORRAL_MANAGEMENT_KEY=... CORRAL_INFERENCE_KEY=... \
    CORRAL_TEST_MODEL=/path/to/tiny.gguf CORRAL_TEST_HF_MODEL=/path/to/tiny-hf \
    "$(scripts/clients-venv.sh)" -m pytest tests/clients

(the Corral must have mlx_lm.server configured as its MLX backend, offline).

Instances are created through the management API with the standard library only (no
`requests`), and deleted again at the end of the session.
"""
import json
import os
import time
import urllib.error
import urllib.request
import uuid

import pytest

READY_LIMIT_S = 120


def required_env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the suite through `cargo test --test clients`")
    return value


class Management:
    """The few `/api/v1` calls the fixtures need."""

    def __init__(self, base, key):
        self.base = base.rstrip("/")
        self.key = key

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as e:
            text = e.read().decode()
            status = e.code
        try:
            return status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return status, text

    def instance(self, name):
        status, value = self.call("GET", f"/api/v1/instances/{name}")
        assert status == 200, value
        return value

    def wait_for(self, name, check, limit_s=READY_LIMIT_S):
        deadline = time.monotonic() + limit_s
        while True:
            value = self.instance(name)
            if check(value):
                return value
            assert time.monotonic() < deadline, f"gave up waiting on {name}: {value}"
            time.sleep(0.1)

    def create(self, name, backend_options, backend_type="llama_cpp", **options):
        body = {"backend_type": backend_type, "backend_options": backend_options, **options}
        status, value = self.call("POST", f"/api/v1/instances/{name}", body)
        assert status == 201, value
        return value

    def delete(self, name):
        self.call("DELETE", f"/api/v1/instances/{name}")


def is_ready(instance):
    return instance.get("status") == "running" and instance.get("health", "ready") == "ready"


@pytest.fixture(scope="session")
def base_url():
    return required_env("CORRAL_BASE_URL").rstrip("/")


@pytest.fixture(scope="session")
def inference_key():
    return required_env("CORRAL_INFERENCE_KEY")


@pytest.fixture(scope="session")
def management(base_url):
    return Management(base_url, required_env("CORRAL_MANAGEMENT_KEY"))


@pytest.fixture(scope="session")
def model_path():
    path = required_env("CORRAL_TEST_MODEL")
    assert os.path.isfile(path), f"CORRAL_TEST_MODEL={path} does not exist"
    return path


def tiny_options(model_path, **extra):
    return {"model": model_path, "ctx_size": 512, "gpu_layers": 0, **extra}


@pytest.fixture(scope="session")
def chat_model(management, model_path):
    """A generative instance, running and ready; its name is the `model` clients ask for."""
    name = "tiny-chat"
    management.create(name, tiny_options(model_path), on_demand_start=True)
    management.wait_for(name, is_ready)
    yield name
    management.delete(name)


@pytest.fixture(scope="session")
def embedding_model(management, model_path):
    """An embedding instance (llama-server `--embedding --pooling mean`)."""
    name = "tiny-embed"
    management.create(
        name, tiny_options(model_path, embedding=True, pooling="mean"), on_demand_start=True
    )
    management.wait_for(name, is_ready)
    yield name
    management.delete(name)


@pytest.fixture()
def stopped_on_demand_model(management, model_path):
    """A fresh instance with on-demand start, created and then stopped by hand."""
    name = f"tiny-od-{uuid.uuid4().hex[:8]}"
    management.create(name, tiny_options(model_path), on_demand_start=True)
    status, value = management.call("POST", f"/api/v1/instances/{name}/stop")
    assert status == 200, value
    management.wait_for(name, lambda v: v.get("status") == "stopped", limit_s=30)
    yield name
    management.delete(name)


@pytest.fixture(scope="session")
def mlx_model(management):
    """An mlx_lm.server instance of the tiny Hugging Face model, running and ready. The backend
    knows the model only by its folder; clients ask for the instance's name."""
    path = required_env("CORRAL_TEST_HF_MODEL")
    assert os.path.isdir(path), f"CORRAL_TEST_HF_MODEL={path} is not a folder"
    name = "tiny-mlx"
    management.create(name, {"model": path}, backend_type="mlx_lm", on_demand_start=True)
    management.wait_for(name, is_ready)
    yield name
    management.delete(name)
