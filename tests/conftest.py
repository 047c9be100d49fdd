"""Fixtures for the pack's tests: tiny real-format checkpoints, a fake Hugging Face Hub on 127.0.0.1, and a
real ComfyUI server (the project's own set-up: .venv + .comfy/comfyui from scripts/setup.sh) with this
pack in its custom_nodes folder."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import shutil
import threading

import pytest

# the server and its client live in comfy_host (the benchmarks start servers too); tests import them from here
from comfy_host import (COMFY_DIR, COMFY_PYTHON, COMFY_VERSION, PACK_NAME, ROOT, ComfyClient, Run,  # noqa: F401
                        free_port, start_comfy, stop_comfy)

TINY_CHECKPOINT = "tiny-test"
TINY_IMAGE_TOKENIZER = "tiny_movqgan.safetensors"
TINY_CODES = 64
TINY_MAX_POSITIONS = 20000  # room for a long generation (the interrupt test)
EXAMPLES = os.environ.get("LUMINA_EXAMPLES", os.path.join(ROOT, "example_workflows"))  # or a folder of your own
HOST_CHECKS_COMBOS = COMFY_VERSION != "0.3.75"  # the executor checks V3 combo values (nodes/compat.py)


# --------------------------------------------------------------------------- tiny models
def build_tiny_models(folder: str) -> None:
    """A tiny transformer folder and a matching MoVQGAN, in the released formats."""
    from safetensors.torch import save_file

    from builders import tiny_checkpoint, tiny_movqgan
    tiny_checkpoint(os.path.join(folder, TINY_CHECKPOINT), num_codes=TINY_CODES, shards=4,
                    max_position_embeddings=TINY_MAX_POSITIONS)
    save_file(tiny_movqgan(TINY_CODES).state_dict_for_save(), os.path.join(folder, TINY_IMAGE_TOKENIZER))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("lumina_mgpt"))
    build_tiny_models(folder)
    return folder


# --------------------------------------------------------------------------- the pack in this process
@pytest.fixture(scope="session")
def pack(tiny_models):
    """The pack imported the way ComfyUI imports it (a package, with ComfyUI's modules importable), with the
    tiny models' folder registered first under lumina_mgpt. For calling nodes directly. ComfyUI runs on the
    CPU unless LUMINA_TEST_CUDA=1 (tests/test_nodes_gpu.py, on a GPU machine)."""
    import importlib.util
    import sys
    if not os.path.isfile(os.path.join(COMFY_DIR, "main.py")):
        raise RuntimeError(f"no ComfyUI at {COMFY_DIR}: run `bash scripts/setup.sh` first")
    if COMFY_DIR not in sys.path:
        sys.path.insert(0, COMFY_DIR)  # ComfyUI imports its own top-level `nodes`; the repo's is reached as lumina_pack
    from comfy.cli_args import args
    args.cpu = os.environ.get("LUMINA_TEST_CUDA") != "1"
    import folder_paths
    spec = importlib.util.spec_from_file_location("lumina_pack", os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules["lumina_pack"] = module
    spec.loader.exec_module(module)
    folder_paths.add_model_folder_path("lumina_mgpt", tiny_models, is_default=True)
    return module


# --------------------------------------------------------------------------- fake Hub
class FakeHub:
    """Serves files the way huggingface.co's /{repo}/resolve/{revision}/{file} does (HEAD + GET, ETag,
    X-Repo-Commit, Range), and records every request."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _lookup(self):
                m = re.match(r"^/(.+?/.+?)/resolve/[^/]+/(.+)$", self.path.split("?")[0])
                return hub.repos.get(m.group(1), {}).get(m.group(2)) if m else None

            def _respond(self, with_body: bool):
                hub.requests.append((self.command, self.path))
                data = self._lookup()
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(re.match(r"bytes=(\d+)-", self.headers.get("Range", "bytes=0-")).group(1))
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", '"%s"' % hashlib.sha256(data).hexdigest())
                self.send_header("X-Repo-Commit", "0" * 40)
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if with_body:
                    self.wfile.write(data[start:])

            def do_HEAD(self):
                self._respond(False)

            def do_GET(self):
                self._respond(True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def downloads(self) -> list[str]:
        return [p for method, p in self.requests if method == "GET"]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def hub_repos(tiny_models: str) -> dict[str, dict[str, bytes]]:
    """The official repo ids, holding the tiny models in the official file layout."""
    import torch
    from safetensors.torch import load_file

    folder = os.path.join(tiny_models, TINY_CHECKPOINT)
    transformer = {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}
    transformer["generation_config.json"] = json.dumps({"cfg": 4.0, "top_k": 4096}).encode()
    ckpt = io.BytesIO()
    torch.save(load_file(os.path.join(tiny_models, TINY_IMAGE_TOKENIZER)), ckpt)
    return {"Alpha-VLLM/Lumina-mGPT-2.0": transformer, "ai-forever/MoVQGAN": {"movqgan_270M.ckpt": ckpt.getvalue()}}


@pytest.fixture(scope="session")
def fake_hub(tiny_models):
    hub = FakeHub(hub_repos(tiny_models))
    yield hub
    hub.close()


# --------------------------------------------------------------------------- ComfyUI server
@pytest.fixture(scope="session")
def comfy(tmp_path_factory, tiny_models, fake_hub):
    """A ComfyUI server with the pack, the tiny models in models/lumina_mgpt (the bundled demo is listed by the
    pack itself), and HF_ENDPOINT pointing at the fake Hub so nothing can reach the internet."""
    state = str(tmp_path_factory.mktemp("comfy_state"))
    models = os.path.join(state, "models", "lumina_mgpt")
    shutil.copytree(tiny_models, models)
    client = start_comfy(state, {"HF_ENDPOINT": fake_hub.url, "HF_HOME": os.path.join(state, "hf_home")})
    yield client
    stop_comfy(client)


def load_example(name: str) -> dict:
    with open(os.path.join(EXAMPLES, name), encoding="utf-8") as f:
        return json.load(f)


SAMPLING_KEYS = ("cfg", "top_k", "temperature")


def registry_properties(ui: dict) -> dict:
    """Node properties ComfyUI-Manager reads to install what a shared workflow needs: the registry id and
    version of the pack behind each node (ours from pyproject.toml; SaveImage is ComfyUI core)."""
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    for node in ui["nodes"]:
        props = node.setdefault("properties", {})
        props.setdefault("Node name for S&R", node["type"])
        if node["type"].startswith("LuminaMGPT2"):
            props.update({"cnr_id": project["name"], "ver": project["version"]})
        else:
            props.setdefault("cnr_id", "comfy-core")
    return ui


def demo_sampling() -> dict:
    """The bundled demo's recommended sampler settings (its generation_config.json), which the examples use."""
    path = os.path.join(ROOT, "demo_model", "lumina-mgpt2-shapes-demo", "generation_config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    return {k: config[k] for k in SAMPLING_KEYS}


# --------------------------------------------------------------------------- which tests need a ComfyUI host
HOST_FIXTURES = {"pack", "comfy"}


def pytest_collection_modifyitems(items):
    """Mark every test that runs inside or against ComfyUI `host`: scripts/test.sh runs those once per ComfyUI
    release and the rest (the engine's) once."""
    for item in items:
        if (HOST_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("server")
                or item.get_closest_marker("browser")):
            item.add_marker(pytest.mark.host)


def pytest_report_header(config):
    return f"ComfyUI host: {COMFY_VERSION} ({COMFY_DIR}, python {COMFY_PYTHON})"


@pytest.fixture(scope="session")
def progress_throttle_s(pack) -> float:
    """Seconds between plain progress updates that this ComfyUI sends (0: it sends every update)."""
    return pack.nodes.compat.PROGRESS_THROTTLE_S


def check_progress_values(values: list[int], total: int, throttle_s: float) -> None:
    """A progress bar's updates as the user gets them: every row where ComfyUI sends every update (0.3.75);
    where it throttles (0.33) the first and the last row always, the rest in order with gaps allowed."""
    if throttle_s == 0:
        assert values == list(range(1, total + 1)), values
    else:
        assert values[0] == 1 and values[-1] == total and values == sorted(set(values)), values
