"""Every Python snippet in README.md and every page of docs/ runs as written.

Each document's snippets run once, in order, in one namespace: a tutorial's later snippets may
use what the earlier ones defined.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(ROOT.glob("docs/**/*.md"))
DOCS = [ROOT / "README.md", *(page for page in PAGES if "```python" in page.read_text())]


def _snippets(doc: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)


def test_docs_have_snippets():
    assert len(_snippets(ROOT / "README.md")) >= 1
    assert len(DOCS) >= 8  # the tutorials, the tour, the how-to guides


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_snippets_run(doc, data_root, monkeypatch):
    from bender.mappings import MAPPINGS

    monkeypatch.setenv("BENDER_DATA", str(data_root))
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("bender.mappings.MAPPINGS", dict(MAPPINGS))  # snippets may register
    namespace = {"__name__": "snippet"}
    for i, code in enumerate(_snippets(doc)):
        exec(compile(code, f"{doc.name} snippet {i}", "exec"), namespace)
