"""A real ComfyUI server for the tests and benchmarks: started headless on a free loopback port from the
project's own set-up (.comfy/<version>/, scripts/setup.sh) with this pack linked into its custom_nodes folder,
and a small HTTP + websocket client that queues prompts and follows them to their end."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFY_HOME = os.environ.get("LUMINA_COMFY_HOME", os.path.join(ROOT, ".comfy"))


def _default_host() -> str:
    """The ComfyUI release these tests run against (scripts/setup.sh puts each in .comfy/<version>/): the one
    whose venv runs pytest (scripts/test.sh), else LUMINA_COMFYUI, else 0.3.75, which the shared venv can
    import in-process (0.33 needs packages of its own venv)."""
    here = os.path.realpath(sys.prefix)
    for version in sorted(os.listdir(COMFY_HOME)) if os.path.isdir(COMFY_HOME) else ():
        if here == os.path.realpath(os.path.join(COMFY_HOME, version, "venv")):
            return version
    return os.environ.get("LUMINA_COMFYUI", "0.3.75")


COMFY_VERSION = _default_host()
COMFY_DIR = os.environ.get("LUMINA_COMFY_DIR", os.path.join(COMFY_HOME, COMFY_VERSION, "comfyui"))
COMFY_PYTHON = os.environ.get("LUMINA_COMFY_PYTHON", os.path.join(COMFY_HOME, COMFY_VERSION, "venv", "bin", "python"))
PACK_NAME = "ComfyUI-Lumina-mGPT2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Run:
    """What one prompt did: its history entry, websocket JSON events and binary (preview) frames."""
    prompt_id: str
    history: dict
    events: list[dict] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.history["status"]["status_str"]

    def of_type(self, kind: str) -> list[dict]:
        return [e["data"] for e in self.events if e["type"] == kind]


class ComfyClient:
    def __init__(self, base: str, state: str, proc, log_path: str):
        self.base, self.state, self.proc, self.log_path = base, state, proc, log_path

    def request(self, method: str, path: str, body=None, timeout: float = 60):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, method=method, data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw else None

    def object_info(self) -> dict:
        status, info = self.request("GET", "/object_info")
        assert status == 200
        return info

    def queue(self, prompt: dict, client_id: str | None = None) -> tuple[int, dict]:
        return self.request("POST", "/prompt", {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex})

    def run(self, prompt: dict, timeout: float = 180, on_event=None) -> Run:
        """Queue `prompt` and follow it on the websocket until it ends; `on_event(run, event)` sees each event."""
        import websocket
        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"{self.base.replace('http', 'ws')}/ws?clientId={client_id}", timeout=timeout)
        try:
            status, body = self.queue(prompt, client_id)
            assert status == 200, body
            run = Run(body["prompt_id"], {})
            deadline = time.time() + timeout
            while time.time() < deadline:
                msg = ws.recv()
                if isinstance(msg, bytes):
                    run.frames.append(msg)
                    continue
                event = json.loads(msg)
                run.events.append(event)
                if on_event is not None:
                    on_event(run, event)
                data = event.get("data", {})
                if data.get("prompt_id") == run.prompt_id and event["type"] in (
                        "execution_success", "execution_error", "execution_interrupted"):
                    break
            else:
                raise TimeoutError(f"prompt {run.prompt_id} did not finish in {timeout} s")
        finally:
            ws.close()
        run.history = self.history(run.prompt_id)
        return run

    def history(self, prompt_id: str, timeout: float = 10) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            _, hist = self.request("GET", f"/history/{prompt_id}")
            if hist and prompt_id in hist:
                return hist[prompt_id]
            time.sleep(0.05)
        raise TimeoutError(f"no history for {prompt_id}")

    def output_images(self, run: Run, node_id: str) -> list[str]:
        """Paths of the images a SaveImage node wrote."""
        return [os.path.join(self.state, "output", im["subfolder"], im["filename"])
                for im in run.history["outputs"][node_id]["images"]]

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


def frontend_root(version: str) -> str:
    """The static folder of a frontend that scripts/setup.sh installed besides the host's pinned one
    (scripts/hosts.sh: EXTRA_FRONTENDS), what ComfyUI's --front-end-root takes."""
    return os.path.join(COMFY_HOME, "frontends", version, "comfyui_frontend_package", "static")


def start_comfy(state: str, env_extra: dict | None = None, timeout: float = 120,
                one_thread: bool = True, front_end_root: str | None = None) -> ComfyClient:
    """Start ComfyUI headless on a free loopback port with `state` as its base directory. one_thread: the
    whole server on one torch thread (the suite's tiny models and MoVQGANs; a benchmark of the engine's own
    thread choice starts it with torch's default instead). front_end_root: serve that frontend (a folder with
    index.html, e.g. frontend_root("1.58.1")) instead of the host's pinned package."""
    if front_end_root is not None and not os.path.isfile(os.path.join(front_end_root, "index.html")):
        raise RuntimeError(f"no frontend at {front_end_root}: run `bash scripts/setup.sh` first")
    if not os.path.isfile(os.path.join(COMFY_DIR, "main.py")) or not os.path.isfile(COMFY_PYTHON):
        raise RuntimeError(f"no ComfyUI at {COMFY_DIR} or no {COMFY_PYTHON}: run `bash scripts/setup.sh` first")
    os.makedirs(os.path.join(state, "custom_nodes"), exist_ok=True)
    link = os.path.join(state, "custom_nodes", PACK_NAME)
    if not os.path.islink(link):
        os.symlink(ROOT, link)
    port = free_port()
    log_path = os.path.join(state, "server.log")
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", **(env_extra or {})}
    if one_thread:
        env["OMP_NUM_THREADS"] = "1"
    else:
        env.pop("OMP_NUM_THREADS", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [COMFY_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
             "--disable-auto-launch", "--disable-api-nodes", "--base-directory", state,
             "--database-url", "sqlite:///:memory:",
             *(["--front-end-root", front_end_root] if front_end_root else [])],
            cwd=COMFY_DIR, stdout=log, stderr=subprocess.STDOUT, env=env)
    client = ComfyClient(f"http://127.0.0.1:{port}", state, proc, log_path)
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(client.base + "/system_stats", timeout=2)
            return client
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                stop_comfy(client)
                raise RuntimeError("ComfyUI did not start:\n" + client.log()[-4000:])
            time.sleep(0.25)


def stop_comfy(client: ComfyClient) -> None:
    client.proc.terminate()  # only the process this fixture started
    try:
        client.proc.wait(15)
    except subprocess.TimeoutExpired:
        client.proc.kill()
        client.proc.wait(5)


