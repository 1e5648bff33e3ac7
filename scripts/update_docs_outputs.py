"""Refresh the program output shown on the docs pages from the examples themselves.

A docs page shows what an example prints in a ```` ```text ```` block after the code block that
includes it (``--8<-- "examples/NAME.py"``); ``tests/test_examples.py`` checks that the two
agree. When a change to the library changes what an example prints, run::

    python scripts/update_docs_outputs.py            # show what would change
    python scripts/update_docs_outputs.py --write    # rewrite the blocks

It runs each example that a page shows output of (``python examples/NAME.py``), then replaces
the page's blocks for it, in order, by the lines it printed: each block keeps its number of
lines, and the blocks take consecutive runs of the output. A page whose blocks no longer
line up (an example that now prints more or fewer lines) is reported for a hand edit.
Examples whose libraries are not installed are skipped. Review the diff before committing:
outputs are the docs' claims.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = ("index.md", "faq.md", "comparison.md", "howto/*.md")
FENCE = re.compile(
    r"^(?P<indent> *)```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S
)
INCLUDE = re.compile(r'--8<-- "examples/(?P<file>[\w.]+\.py)(?::[\w-]+)?"')
EXTRA_OUTPUT = {"hf_trainer.py": re.compile(r"^\{'train_runtime'")}
"""Lines that an example's libraries print and its page does not show."""
NOT_PROGRAM_OUTPUT = {"test_my_model.py"}
"""Examples whose page shows what pytest prints for them, not what they print when run."""


def blocks_of(text: str) -> list[tuple[str, re.Match[str]]]:
    """(example, text block) for each output block of a page, in order."""
    found, current = [], None
    for block in FENCE.finditer(text):
        if block["lang"] == "python":
            included = INCLUDE.findall(block["body"])
            current = included[-1] if included else None
            current = None if current in NOT_PROGRAM_OUTPUT else current
        elif block["lang"] == "text" and current is not None:
            found.append((current, block))
    return found


def run(example: str, timeout: float) -> list[str] | None:
    """What ``python examples/<example>`` prints, or None if it fails (reported)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / example)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        print(f"{example}: timed out after {timeout:.0f} s")
        return None
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["?"]
        print(f"{example}: failed ({last[0]})")
        return None
    skip = EXTRA_OUTPUT.get(example)
    return [line for line in done.stdout.splitlines() if not (skip and skip.match(line))]


def refresh(page: Path, outputs: dict[str, list[str] | None]) -> tuple[str, list[str]]:
    """The page with its output blocks replaced, and the problems that need a hand edit."""
    text = page.read_text()
    problems: list[str] = []
    position: dict[str, int] = {}
    pieces, last = [], 0
    for example, block in blocks_of(text):
        printed = outputs.get(example)
        if printed is None:
            continue
        indent = block["indent"]
        old = block["body"].splitlines()
        start = position.get(example, 0)
        new = printed[start : start + len(old)]
        position[example] = start + len(old)
        if len(new) != len(old):
            problems.append(f"{page.relative_to(DOCS)}: {example} printed fewer lines than shown")
            continue
        body = "".join(f"{indent}{line}\n" if line else "\n" for line in new)
        pieces += [text[last : block.start("body")], body]
        last = block.end("body")
    for example, start in position.items():
        printed = outputs.get(example)
        if printed is not None and start != len(printed):
            problems.append(
                f"{page.relative_to(DOCS)}: {example} printed {len(printed)} lines, "
                f"the page shows {start}"
            )
    pieces.append(text[last:])
    return "".join(pieces), problems


def sync_readme(write: bool) -> int:
    """Give README.md's quick-start output block the home page's (1 if it changed)."""
    index = (DOCS / "index.md").read_text()
    home = [block for example, block in blocks_of(index) if example == "quickstart.py"]
    readme = ROOT / "README.md"
    text = readme.read_text()
    start = text.find("## Quick start")
    blocks = [b for b in FENCE.finditer(text, max(start, 0)) if b["lang"] == "text"]
    if not home or start < 0 or not blocks:
        return 0
    block = blocks[0]
    new = text[: block.start("body")] + home[0]["body"] + text[block.end("body") :]
    if new == text:
        return 0
    sys.stdout.writelines(
        difflib.unified_diff(text.splitlines(True), new.splitlines(True), "README.md", "README.md")
    )
    if write:
        readme.write_text(new)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the pages")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per example")
    parser.add_argument("--only", action="append", default=[], help="only this example (NAME.py)")
    args = parser.parse_args(argv)
    pages = sorted({p for pattern in PAGES for p in DOCS.glob(pattern)})
    examples = sorted({example for page in pages for example, _ in blocks_of(page.read_text())})
    examples = [e for e in examples if not args.only or e in args.only]
    outputs = {example: run(example, args.timeout) for example in examples}
    problems, changed = [], 0
    for page in pages:
        old = page.read_text()
        new, found = refresh(page, outputs)
        problems += found
        if new != old:
            changed += 1
            name = str(page.relative_to(ROOT))
            sys.stdout.writelines(
                difflib.unified_diff(old.splitlines(True), new.splitlines(True), name, name)
            )
            if args.write:
                page.write_text(new)
    changed += sync_readme(args.write)
    for problem in problems:
        print(f"needs a hand edit: {problem}")
    verb = "rewrote" if args.write else "would rewrite"
    print(f"{verb} {changed} page(s); {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
