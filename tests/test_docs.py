"""Every Python snippet in README.md and docs/api.md runs as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "api.md"]
SNIPPETS = [
    pytest.param(code, id=f"{doc.name}-{i}")
    for doc in DOCS
    for i, code in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S))
]


def test_docs_have_snippets():
    assert len(SNIPPETS) >= 7


@pytest.mark.parametrize("code", SNIPPETS)
def test_snippet_runs(code, data_root, monkeypatch):
    from bender.mappings import MAPPINGS

    monkeypatch.setenv("BENDER_DATA", str(data_root))
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("bender.mappings.MAPPINGS", dict(MAPPINGS))  # snippets may register
    exec(compile(code, "snippet", "exec"), {"__name__": "snippet"})
