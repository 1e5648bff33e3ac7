"""Every page of the built docs site in headless Chromium, as a reader without internet sees it.

``scripts/check_site.py`` opens each page from disk at 1280 x 900 and fails on formulas left
as raw TeX (or showing a backslash, or wider than the text column), tables and code blocks
wider than the column, JavaScript or console errors, failed loads, requests to other hosts,
and a search that does not answer. It saves a screenshot of every page.

It needs Chromium and takes about half a minute, so it runs in ``make docs-check`` (which
sets ``GXD_DOCS_BROWSER=1`` and ``GXD_DOCS_SITE``), not in ``make test``. The script and the
browser it starts run in a process group of their own, which is killed on every way out of
the test, a timeout included.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import processes
import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    os.environ.get("GXD_DOCS_BROWSER") != "1",
    reason="the browser check runs in `make docs-check` (GXD_DOCS_BROWSER=1)",
)

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def test_every_page_renders_in_a_browser(tmp_path: Path) -> None:
    site = Path(os.environ.get("GXD_DOCS_SITE", ROOT / "site"))
    assert (site / "index.html").is_file(), f"no built site in {site}: run `make docs` first"
    if not any(shutil.which(b) for b in BROWSERS):
        pytest.fail("no Chromium on PATH: apt-get install chromium (scripts/install_chromium.sh)")
    out = Path(os.environ.get("GXD_DOCS_SCREENSHOTS", tmp_path / "screenshots"))
    command = [
        sys.executable,
        str(ROOT / "scripts" / "check_site.py"),
        "--site",
        str(site),
        "--out",
        str(out),
        "--timeout",
        "240",
    ]
    done = processes.run(command, timeout=300, cwd=ROOT)
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
