"""The documentation site: ``mkdocs build --strict`` passes and its API reference covers every
public name (``bender.__all__`` and each documented module's), generated from the docstrings."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bender

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"

pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]') builds the site")
pytest.importorskip("mkdocstrings_handlers.python")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _documented_modules() -> list[str]:
    """The modules that the reference pages render (``::: module`` lines)."""
    found = []
    for page in sorted(REFERENCE.glob("*.md")):
        found += re.findall(r"^::: ([\w.]+)$", page.read_text(), flags=re.MULTILINE)
    return found


def _public_names(name: str) -> list[str]:
    """A module's public names: ``__all__``, else what it defines and does not start with _."""
    module = importlib.import_module(name)
    if hasattr(module, "__all__"):
        return list(module.__all__)
    source = inspect.getsource(module)
    return [
        key
        for key, value in vars(module).items()
        if not key.startswith("_")
        and (
            ((inspect.isclass(value) or inspect.isfunction(value)) and value.__module__ == name)
            # a constant assigned here, not imported
            or (key.isupper() and re.search(rf"^{key}\b[^=\n]*=", source, re.MULTILINE))
        )
    ]


def test_every_name_of_bender_all_is_on_the_package_page():
    page = (REFERENCE / "bender.md").read_text()
    for name in bender.__all__:
        assert f"[`{name}`]" in page, name


def test_every_package_module_has_a_reference_page():
    modules = set(_documented_modules())
    for path in sorted((ROOT / "src" / "bender").rglob("*.py")):
        parts = path.relative_to(ROOT / "src").with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(part.startswith("_") for part in parts) or parts[-1] in ("cli", "bender"):
            continue  # private modules, the command line (its page is the how-to) and the
            # package, whose page lists bender.__all__ (tested above)
        assert ".".join(parts) in modules, ".".join(parts)


def test_the_site_builds_strict_and_its_reference_names_every_public_name(site):
    html = "".join(p.read_text() for p in (site / "reference").rglob("index.html"))
    for module in _documented_modules():
        assert f'id="{module}"' in html, module
        for name in _public_names(module):
            assert f'id="{module}.{name}"' in html, f"{module}.{name}"
