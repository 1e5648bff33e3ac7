"""The built docs site: a strict build, then what a reader gets from it without a browser.

``scripts/check_docs_html.py`` reads every built page: docstring examples on the API
reference must be highlighted code (not prose or block quotes), nothing may be loaded from
another host, every internal link must work when the site is opened from disk, and no
snippet or mkdocstrings directive may be left unexpanded. ``make docs-check`` also opens
every page in a browser (``tests/test_docs_browser.py``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import processes
import pytest

ROOT = Path(__file__).resolve().parent.parent

spec = importlib.util.spec_from_file_location(
    "check_docs_html", ROOT / "scripts" / "check_docs_html.py"
)
assert spec is not None and spec.loader is not None
check_docs_html = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = check_docs_html  # its dataclasses look their module up
spec.loader.exec_module(check_docs_html)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built strictly into a temporary folder (``GXD_DOCS_SITE``: one built already)."""
    given = os.environ.get("GXD_DOCS_SITE")
    if given:
        return Path(given).resolve()
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    done = processes.run(command, timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_site_works_offline_and_renders_every_example_as_code(site: Path) -> None:
    problems, counts = check_docs_html.check(site)
    assert not problems, "\n".join(problems[:40]) + check_docs_html.explain(problems)
    assert counts["example lines (>>>) in code"] > 100  # the reference's examples are code


def test_formulas_and_search_need_no_network(site: Path) -> None:
    pages = [p.read_text() for p in site.rglob("*.html")]
    assert any("assets/vendor/mathjax/tex-svg-full.js" in page for page in pages)
    assert (site / "assets" / "vendor" / "mathjax" / "tex-svg-full.js").stat().st_size > 1e6
    assert (site / "search" / "search_index.js").read_text().startswith("var __index")
    assert not any("fonts.googleapis.com" in page or "cdn.jsdelivr" in page for page in pages)
