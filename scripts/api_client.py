#!/usr/bin/env python3
"""Run an API-format workflow on a ComfyUI server with a new prompt and seed, and download the PNGs.

    python scripts/api_client.py --prompt "two green squares" --seed 7
    python scripts/api_client.py --workflow my_workflow_api.json --server http://127.0.0.1:8188 --out outputs

Standard library only. The prompt and seed go into every Lumina-mGPT 2.0 Sampler of the workflow (export
your own with the UI's "Export (API)"). Prints the path of each downloaded image.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_WORKFLOW = os.path.join(ROOT, "example_workflows", "api", "lumina_mgpt2_t2i_api.json")
SAMPLER = "LuminaMGPT2Sampler"


def call(server: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        sys.exit(f"{path}: HTTP {e.code}: {detail}")


def set_inputs(workflow: dict, prompt: str | None, seed: int | None) -> None:
    samplers = [node for node in workflow.values() if node.get("class_type") == SAMPLER]
    if not samplers:
        sys.exit(f"the workflow has no {SAMPLER} node")
    for node in samplers:
        if prompt is not None:
            node["inputs"]["prompt"] = prompt
        if seed is not None:
            node["inputs"]["seed"] = seed


def wait(server: str, prompt_id: str, timeout: float) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        history = call(server, f"/history/{prompt_id}")
        if prompt_id in history:
            entry = history[prompt_id]
            if entry["status"]["status_str"] != "success":
                errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
                sys.exit("generation failed: " + (errors[0]["exception_message"] if errors else str(entry["status"])))
            return entry
        time.sleep(0.5)
    sys.exit(f"no result after {timeout:.0f} s (is the queue busy?)")


def download(server: str, entry: dict, out: str) -> list[str]:
    os.makedirs(out, exist_ok=True)
    paths = []
    for output in entry["outputs"].values():
        for image in output.get("images", []):
            if image.get("type") != "output":
                continue  # previews are temporary copies
            query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
            path = os.path.join(out, image["filename"])
            with urllib.request.urlopen(f"{server}/view?{query}", timeout=60) as r, open(path, "wb") as f:
                f.write(r.read())
            paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:8188")
    parser.add_argument("--workflow", default=DEFAULT_WORKFLOW, help="an API-format workflow JSON")
    parser.add_argument("--prompt", help="new prompt for the sampler(s)")
    parser.add_argument("--seed", type=int, help="new seed for the sampler(s)")
    parser.add_argument("--out", default="outputs", help="folder for the downloaded PNGs")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()

    with open(args.workflow, encoding="utf-8") as f:
        workflow = json.load(f)
    set_inputs(workflow, args.prompt, args.seed)
    queued = call(args.server, "/prompt", {"prompt": workflow, "client_id": uuid.uuid4().hex})
    entry = wait(args.server, queued["prompt_id"], args.timeout)
    for path in download(args.server, entry, args.out):
        print(path)


if __name__ == "__main__":
    main()
