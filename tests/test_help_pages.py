"""Every help page is where the frontend's help panel asks first: web/docs/<node_id>/<locale>.md, then
web/docs/<node_id>.md (ComfyUI_frontend's NodeHelpService). Without the localized copy every help panel opens
with a 404 in the console. web/docs/<node_id>.md stays the page to edit (tests/test_node_docs.py checks it
against the schemas); web/docs/<node_id>/en.md is its copy, byte for byte. LUMINA_UPDATE_DOCS=1 rewrites the
copies. tests/test_browser_frontends.py opens one in the help panel of each frontend and checks no 404.
"""
import glob
import os

from conftest import ROOT

DOCS = os.path.join(ROOT, "web", "docs")
PAGES = sorted(glob.glob(os.path.join(DOCS, "*.md")))


def test_every_help_page_has_its_english_copy_where_the_help_panel_asks_first():
    assert PAGES
    update = os.environ.get("LUMINA_UPDATE_DOCS") == "1"
    stale = []
    for page in PAGES:
        copy = os.path.join(DOCS, os.path.basename(page)[: -len(".md")], "en.md")
        with open(page, "rb") as f:
            text = f.read()
        if update:
            os.makedirs(os.path.dirname(copy), exist_ok=True)
            with open(copy, "wb") as f:
                f.write(text)
        if not os.path.isfile(copy) or open(copy, "rb").read() != text:
            stale.append(os.path.relpath(copy, ROOT))
    assert not stale, f"out of date or missing: {stale}: rerun with LUMINA_UPDATE_DOCS=1"


def test_no_localized_page_without_its_page():
    folders = [d for d in glob.glob(os.path.join(DOCS, "*")) if os.path.isdir(d)]
    orphans = [os.path.relpath(d, ROOT) for d in folders if not os.path.isfile(d + ".md")]
    assert not orphans, f"a help folder for a page that is gone: {orphans}"
    for folder in folders:
        assert sorted(os.listdir(folder)) == ["en.md"], folder  # other locales: add them here and to the checks
