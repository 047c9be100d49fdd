"""Every node has a help page, web/docs/<node_id>.md, that matches its schema.

ComfyUI's frontend shows that page in the node's help panel (it fetches
/extensions/<pack folder>/docs/<node_id>.md), and the registry expects one per node. A page starts with
`# <display_name>` and has an `## Inputs` and an `## Outputs` section; each input and output is a top-level
bullet that starts with its name in backticks, e.g. "- `cfg`: ..." or "- `width`, `height`: ...".
Indented bullets and backticks elsewhere (option values, other nodes) are free text. Checked against the
schemas the pack defines, in-process: a renamed, added or removed input shows up here as a page to fix.
"""
from __future__ import annotations

import os
import re

import pytest

from conftest import ROOT

DOCS = os.path.join(ROOT, "web", "docs")
# A top-level bullet that names one or more sockets: "- `a`: ...", "- `a`, `b`: ..." or "- `a` and `b`: ...".
LEAD = re.compile(r"^[-*] ((?:`[^`\n]+`(?:, | and | / |,? or )?)+)")
NAME = re.compile(r"`([^`\n]+)`")


@pytest.fixture(scope="module")
def schemas(pack) -> dict:
    from lumina_pack import nodes
    found = {}
    for cls in nodes.NODES:
        schema = cls.GET_SCHEMA() if hasattr(cls, "GET_SCHEMA") else cls.define_schema()
        found[schema.node_id] = schema
    return found


def page_path(node_id: str) -> str:
    return os.path.join(DOCS, f"{node_id}.md")


def read_page(node_id: str) -> str | None:
    path = page_path(node_id)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


def section(text: str, title: str) -> list[str] | None:
    """The lines under `## <title>` up to the next level-2 heading (### sub-headings stay inside); None when
    the page has no such section."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == f"## {title}"]
    if not starts:
        return None
    body = []
    for line in lines[starts[0] + 1:]:
        if line.startswith("## "):
            break
        body.append(line)
    return body


def documented_names(lines: list[str]) -> list[str]:
    """Names led by top-level bullets, in page order."""
    names = []
    for line in lines:
        m = LEAD.match(line)
        if m:
            names += NAME.findall(m.group(1))
    return names


def input_names(schema) -> list[str]:
    """Inputs a user connects or sets (required and optional); hidden inputs are a separate list."""
    return [i.id for i in schema.inputs]


def output_names(schema) -> list[str]:
    return [o.display_name or o.id for o in schema.outputs]


def rel(node_id: str) -> str:
    return os.path.relpath(page_path(node_id), ROOT)


def pages(schemas):
    """(node_id, schema, text) for every node whose page exists (the missing ones fail their own test)."""
    for node_id, schema in schemas.items():
        text = read_page(node_id)
        if text is not None:
            yield node_id, schema, text


def test_every_node_has_a_page_titled_with_its_display_name(schemas):
    problems = []
    for node_id, schema in schemas.items():
        text = read_page(node_id)
        if text is None:
            problems.append(f"{rel(node_id)} is missing: write the help page of {schema.display_name!r}")
            continue
        first = text.splitlines()[0] if text else ""
        if first != f"# {schema.display_name}":
            problems.append(f"{rel(node_id)}: first line must be '# {schema.display_name}', is {first!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("kind", ["Inputs", "Outputs"])
def test_every_page_documents_exactly_the_sockets_of_its_node(schemas, kind):
    expected_of = input_names if kind == "Inputs" else output_names
    problems = []
    for node_id, schema, text in pages(schemas):
        expected = expected_of(schema)
        lines = section(text, kind)
        if lines is None:
            if expected:
                problems.append(f"{rel(node_id)}: add a '## {kind}' section for {', '.join(expected)}")
            continue
        documented = documented_names(lines)
        for name in expected:
            if name not in documented:
                problems.append(f"{rel(node_id)}: '## {kind}' lacks a bullet '- `{name}`: ...'")
        for name in documented:
            if name not in expected:
                problems.append(f"{rel(node_id)}: '## {kind}' documents `{name}`, which {schema.node_id} does not "
                                f"have (renamed or removed? its {kind.lower()}: {', '.join(expected) or 'none'})")
        repeated = sorted({n for n in documented if documented.count(n) > 1})
        if repeated:
            problems.append(f"{rel(node_id)}: '## {kind}' documents {', '.join(repeated)} more than once")
    assert not problems, "\n".join(problems)


def test_pages_belong_to_nodes(schemas):
    """A page whose node was renamed or removed would never be shown."""
    stray = sorted(f for f in os.listdir(DOCS) if f.endswith(".md") and f[:-3] not in schemas)
    assert not stray, (f"web/docs has pages for nodes the pack does not define: {', '.join(stray)} "
                       f"(nodes: {', '.join(sorted(schemas))})")


def test_the_checks_catch_a_stale_page():
    """The parsing the tests above rely on: bullets' leading names count, indented option bullets don't."""
    page = ("# X\n\nText with `cfg` inline.\n\n## Inputs\n\n- `width`, `height`: size.\n- `task`: what.\n"
            "  - `t2i`: text to image.\n- `old_name`: gone.\n\n## Outputs\n\n- `image`: pixels.\n")
    assert documented_names(section(page, "Inputs")) == ["width", "height", "task", "old_name"]
    assert documented_names(section(page, "Outputs")) == ["image"]
    assert section(page, "Tips") is None
