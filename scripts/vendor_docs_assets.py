"""Vendor the browser scripts the docs site needs, so that it works without internet.

The site must render its formulas and run its search when it is opened from disk or served
on a machine without internet access, so nothing it loads may come from a CDN. This script
takes two packages from the npm registry, at pinned versions, and copies the files the site
loads into ``docs/assets/vendor/``:

- MathJax 3 (``es5/tex-svg-full.js``: every TeX extension and SVG output in one file, so no
  font or extension is fetched at run time), with its licence;
- ``iframe-worker`` (``shim/index.js``), which Material's ``offline`` plugin uses to run the
  search worker on pages opened from ``file://``, with its licence.

The copied files are committed; run this script again only to change a version::

    python scripts/vendor_docs_assets.py            # needs npm on PATH
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "docs" / "assets" / "vendor"

PACKAGES = {
    "mathjax": ("3.2.2", {"es5/tex-svg-full.js": "tex-svg-full.js", "LICENSE": "LICENSE"}),
    "iframe-worker": ("1.0.4", {"shim/index.js": "shim.js", "LICENSE": "LICENSE"}),
}
"""npm package -> (version, {file in the package: file under docs/assets/vendor/<package>/})."""


def fetch(package: str, version: str, workdir: Path) -> Path:
    """Download ``package@version`` with ``npm pack`` and unpack it; its ``package/`` folder."""
    subprocess.run(
        ["npm", "pack", "--silent", f"{package}@{version}"],
        cwd=workdir,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    [archive] = workdir.glob(f"{package}-{version}.tgz")
    target = workdir / package
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target / "package"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    if shutil.which("npm") is None:
        print("npm is not installed: apt-get install npm (or use the committed files)")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        for package, (version, files) in PACKAGES.items():
            source = fetch(package, version, Path(tmp))
            out = VENDOR / package
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            for inside, name in files.items():
                shutil.copyfile(source / inside, out / name)
                digest = hashlib.sha256((out / name).read_bytes()).hexdigest()[:16]
                print(f"{package}@{version} {inside} -> {(out / name).relative_to(ROOT)} {digest}")
            (out / "VERSION").write_text(f"{package}@{version} from the npm registry\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
