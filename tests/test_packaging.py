"""Registry packaging: the publish workflow runs when pyproject.toml's version changes (and only then), and
pyproject names the oldest ComfyUI the suite runs on."""
import os
import subprocess
import tomllib

import yaml

from conftest import ROOT

WORKFLOW = os.path.join(ROOT, ".github", "workflows", "publish.yml")


def load_workflow() -> dict:
    with open(WORKFLOW, encoding="utf-8") as f:
        return yaml.safe_load(f)


def test_publish_workflow_triggers_on_pyproject_pushes_to_main():
    wf = load_workflow()
    triggers = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads the key `on` as True
    assert triggers["push"]["branches"] == ["main"] and triggers["push"]["paths"] == ["pyproject.toml"]
    steps = wf["jobs"]["publish"]["steps"]
    (publish,) = [s for s in steps if "publish-node-action" in s.get("uses", "")]
    assert publish["with"]["personal_access_token"] == "${{ secrets.REGISTRY_ACCESS_TOKEN }}"
    assert "needs.version-changed.outputs.changed == 'true'" in wf["jobs"]["publish"]["if"]


def run_compare_step(repo: str) -> dict:
    """Run the workflow's version comparison as GitHub would, in `repo`, and read its outputs."""
    (step,) = [s for s in load_workflow()["jobs"]["version-changed"]["steps"] if s.get("id") == "compare"]
    out = os.path.join(repo, "github_output")
    open(out, "w").close()
    subprocess.run(["bash", "-e", "-c", step["run"]], cwd=repo, check=True, env={**os.environ, "GITHUB_OUTPUT": out},
                   capture_output=True)
    with open(out) as f:
        return dict(line.strip().split("=", 1) for line in f if "=" in line)


def commit_pyproject(repo: str, version: str, description: str) -> None:
    with open(os.path.join(repo, "pyproject.toml"), "w") as f:
        f.write(f'[project]\nname = "lumina-mgpt2"\nversion = "{version}"\ndescription = "{description}"\n')
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", repo]
    subprocess.run(git + ["add", "pyproject.toml"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", f"{version} {description}"], check=True)


def test_publish_runs_only_when_the_version_changes(tmp_path):
    repo = str(tmp_path)
    subprocess.run(["git", "init", "-q", repo], check=True)
    commit_pyproject(repo, "0.1.0", "first")
    assert run_compare_step(repo) == {"version": "0.1.0", "changed": "true"}  # first release
    commit_pyproject(repo, "0.1.0", "only the description changed")
    assert run_compare_step(repo) == {"version": "0.1.0", "changed": "false"}
    commit_pyproject(repo, "0.2.0", "new version")
    assert run_compare_step(repo) == {"version": "0.2.0", "changed": "true"}


def test_pyproject_names_the_oldest_tested_comfyui():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        comfy = tomllib.load(f)["tool"]["comfy"]
    hosts = open(os.path.join(ROOT, "scripts", "hosts.sh")).read()
    tested = hosts.split("HOSTS_NEWEST_FIRST=(", 1)[1].split(")", 1)[0].split()
    assert comfy["requires-comfyui"] == f">={tested[-1]}"
