"""The docs pages, README.md and the citation files, read as a user reads them.

- Every code block on the user pages is a complete program from ``examples/`` (run by
  ``tests/test_examples.py``), or the blocks of one page, copied in order, are one.
- The pages speak to users: no issue numbers, commit hashes or project goals.
- README.md's quick start is the example file and shows what the home page shows; its links
  lead to published pages that exist, or to files that render on a code host.
- Version, release date and repository address agree across pyproject.toml, CHANGELOG.md,
  CITATION.cff, mkdocs.yml and the pages.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from test_examples import FENCE, TESTED

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"

USER_PAGES = sorted(
    p
    for p in DOCS.rglob("*.md")
    if p.relative_to(DOCS).parts[0] not in ("reference", "overrides")
    and p.name not in ("architecture.md", "changelog.md")
)
"""Pages for users (the contributors' architecture page and the generated ones aside)."""

PROGRAM_PAGES = [p for p in USER_PAGES if p.name != "benchmarks.md" and p.name != "performance.md"]
"""Pages whose Python code must be complete programs."""

ONE_LINER = "opt = GXDReset(torch.optim.Adam(model.parameters(), lr=1e-3), model)"
"""The one line a page may show on its own: the wrap itself."""

INCLUDE = re.compile(r'^\s*--8<-- "examples/(?P<file>[\w.]+\.py)(?::(?P<section>[\w-]+))?"\s*$')
SECTION_MARK = re.compile(r"^\s*# --8<-- \[(start|end):[\w-]+\]\s*$")


def python_blocks(page: Path) -> list[str]:
    return [m["body"] for m in FENCE.finditer(page.read_text()) if m["lang"] == "python"]


def code_lines(lines: list[str]) -> list[str]:
    """Lines of code as they are compared: without blank lines and section markers."""
    return [line.rstrip() for line in lines if line.strip() and not SECTION_MARK.match(line)]


def program(name: str) -> list[str]:
    """The code of ``examples/<name>`` after its module docstring."""
    text = (EXAMPLES / name).read_text()
    tree = ast.parse(text)
    first = tree.body[0]
    skip = (
        first.end_lineno
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
        else 0
    )
    return code_lines(text.splitlines()[skip or 0 :])


def section(name: str, part: str) -> list[str]:
    lines = (EXAMPLES / name).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if f"[start:{part}]" in line)
    end = next(i for i, line in enumerate(lines) if f"[end:{part}]" in line)
    return lines[start + 1 : end]


@pytest.mark.parametrize("page", PROGRAM_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_the_code_on_a_page_is_complete_programs(page: Path) -> None:
    """Each block is a whole example file, or the page's blocks of one file, in order, are
    the whole file: copying the code of a page never leaves a name undefined."""
    sections: dict[str, list[str]] = {}
    for body in python_blocks(page):
        lines = [line for line in body.splitlines() if line.strip()]
        if [line.strip() for line in lines] == [ONE_LINER]:
            continue
        includes = [INCLUDE.match(line) for line in lines]
        assert lines and all(includes), (
            f"{page.relative_to(ROOT)}: a Python block that is not included from examples/:\n"
            + body
        )
        for match in includes:
            assert match is not None
            name, part = match["file"], match["section"]
            assert name in TESTED, f"examples/{name} is shown on a page but run by no test"
            if part is not None:
                sections.setdefault(name, []).extend(section(name, part))
    for name, shown in sections.items():
        assert code_lines(shown) == program(name), (
            f"{page.relative_to(ROOT)}: the sections of examples/{name} shown on the page, in "
            "order, are not the whole program: a reader who copies them gets another program"
        )


INTERNAL = [
    (re.compile(r"\bissues?\b(?! a warning)", re.I), "an issue of the project"),
    (re.compile(r"\bcommit [0-9a-f]{6,40}\b"), "a commit hash"),
    (re.compile(r"\b[0-9a-f]{7,40}\b(?=\))"), "a commit hash"),
    (re.compile(r"\b(the|our|its|this page's) goals?\b", re.I), "a project goal"),
    (re.compile(r"\bgoal (holds|is met|was met)\b", re.I), "a project goal"),
]
"""Project language that does not belong on a page for users."""


@pytest.mark.parametrize(
    "path",
    [*USER_PAGES, ROOT / "README.md", ROOT / "CHANGELOG.md"],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_pages_speak_to_users(path: Path) -> None:
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("|"):
            continue  # results tables are kept as their tools print them
        for pattern, what in INTERNAL:
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()}")
    assert not found, "\n".join(found)


def mkdocs_config() -> dict[str, object]:
    """The plain keys of mkdocs.yml (read without its YAML tags)."""
    config: dict[str, object] = {}
    for line in (ROOT / "mkdocs.yml").read_text().splitlines():
        match = re.match(r"^(site_url|repo_url|site_name): (\S+)$", line)
        if match:
            config[match[1]] = match[2]
    return config


def test_readme_quick_start_is_the_example_and_shows_its_output() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Quick start")
    blocks = [m for m in FENCE.finditer(readme, start)]
    code = next(m for m in blocks if m["lang"] == "python")
    shown = next(m for m in blocks if m["lang"] == "text" and m.start() > code.start())
    assert code_lines(code["body"].splitlines()) == program("quickstart.py"), (
        "README.md's quick start differs from examples/quickstart.py: copy the file's code"
    )
    home = (DOCS / "index.md").read_text()
    home_output = next(
        m["body"] for m in FENCE.finditer(home, home.index("## Quick start")) if m["lang"] == "text"
    )
    assert shown["body"] == home_output, "README.md and the home page show different output"


LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)|<(?P<bare>https?://[^>\s]+)>")


def test_readme_links_lead_to_published_pages_or_to_files_that_render() -> None:
    site = str(mkdocs_config()["site_url"])
    readme = (ROOT / "README.md").read_text()
    targets = [m["target"] or m["bare"] for m in LINK.finditer(readme)]
    assert targets
    for target in targets:
        url = target.split("#")[0]
        if url.startswith(site):
            page = url.removeprefix(site) or "index.html"
            assert page.endswith(".html"), f"{target}: the site's pages end in .html"
            source = DOCS / (page.removesuffix(".html") + ".md")
            assert source.is_file(), f"README.md links to {target}, a page the site lacks"
        elif not re.match(r"https?://", url):
            assert (ROOT / url).exists(), f"README.md links to {target}, which does not exist"
            assert not url.startswith("docs/"), (
                f"README.md links to {target}: on a code host a docs page shows its raw "
                "directives; link to the published page instead"
            )


def test_repository_and_site_addresses_agree() -> None:
    config = mkdocs_config()
    repo, site = str(config["repo_url"]), str(config["site_url"])
    host = re.escape(repo.split("/")[2])
    for path in [*USER_PAGES, ROOT / "README.md", ROOT / "CITATION.cff"]:
        text = path.read_text()
        for url in re.findall(rf"https://{host}/[\w.-]+/[\w.-]+", text):
            assert url == repo, f"{path.relative_to(ROOT)} names {url}, mkdocs.yml {repo}"
        for url in re.findall(r"https://[\w.-]+\.github\.io/[\w.-]+/", text):
            assert url == site, f"{path.relative_to(ROOT)} names {url}, mkdocs.yml {site}"


def test_version_and_release_date_agree() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"$', pyproject, re.M)[1]  # type: ignore[index]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", changelog, re.M)
    assert released and released[0][0] == version, "the latest release in CHANGELOG.md"
    cff = (ROOT / "CITATION.cff").read_text()
    assert re.search(rf"^version: {re.escape(version)}$", cff, re.M)
    assert re.search(rf'^date-released: "{released[0][1]}"$', cff, re.M)
    assert f"version = {{{version}}}" in (DOCS / "citation.md").read_text()


def test_every_page_is_in_the_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "overrides" not in p.parts}
    missing = sorted(p for p in pages if f": {p}" not in nav)
    assert not missing, f"pages missing from the nav of mkdocs.yml: {missing}"
