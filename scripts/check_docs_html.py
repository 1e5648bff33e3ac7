"""Check the built docs site without a browser: examples, links and offline use.

Run it on the output of ``make docs`` (``site/`` by default)::

    python scripts/check_docs_html.py site

It reads every HTML page with the standard library's parser and reports

- **examples that are not code**: on the API reference pages, a docstring example must be a
  highlighted code block. Text that starts with ``>>>`` outside ``<pre>``/``<code>``, or a
  ``<blockquote>`` (Markdown reads ``>>>`` as three nested quotes), means a docstring's
  example section was rendered as prose: its header must be ``Examples:`` (Google style),
  not ``Example:``;
- **references to other hosts**: a script, stylesheet, font, image or frame loaded from
  ``http(s)://`` (in HTML or in the site's CSS), which breaks the site without internet;
- **broken internal links**: a link to a page or file that the site does not contain, a
  link to a folder (which a site opened from disk cannot follow), or an anchor the target
  page does not have;
- **unexpanded directives**: ``--8<--`` snippet markers or ``:::`` mkdocstrings directives
  left in the text of a page;
- **no offline search index** (``search/search_index.js``).

It exits with 1 and lists every problem if there is one, else prints a summary and exits 0.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

REFERENCE = "reference"
"""The folder of the API reference pages, whose examples come from docstrings."""

EXTERNAL = re.compile(r"^(https?:)?//", re.IGNORECASE)
CSS_URL = re.compile(r"(?:@import\s+|url\()\s*['\"]?((?:https?:)?//[^'\")\s]+)", re.IGNORECASE)
RAW_DIRECTIVE = re.compile(r"(^|\s)(--8<--|:::\s*gxd_optim)")

RENAME = (
    "grep -rlZE '^\\s*Example:\\s*$' gxd_optim --include='*.py' | "
    "xargs -0 sed -i -E 's/^(\\s*)Example:\\s*$/\\1Examples:/'"
)
"""The fix for docstring examples rendered as prose (griffe reads only ``Examples:``)."""

LOADERS = {
    "script": ("src",),
    "img": ("src", "srcset"),
    "iframe": ("src",),
    "source": ("src", "srcset"),
    "video": ("src", "poster"),
    "audio": ("src",),
    "embed": ("src",),
    "object": ("data",),
}
"""Elements whose attributes make the browser fetch something when the page loads."""

LINK_LOADS = {
    "stylesheet",
    "preconnect",
    "preload",
    "modulepreload",
    "icon",
    "manifest",
    "dns-prefetch",
    "prefetch",
}


@dataclass
class Page:
    """What one HTML page holds, as far as the checks need."""

    path: Path
    ids: set[str] = field(default_factory=set)
    links: list[str] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)
    prose_prompts: list[str] = field(default_factory=list)
    quotes: list[str] = field(default_factory=list)
    raw_directives: list[str] = field(default_factory=list)
    doctest_blocks: int = 0


class Reader(HTMLParser):
    """Collects ids, links, loaded resources and text outside code, with the nearest heading."""

    def __init__(self, page: Page) -> None:
        super().__init__(convert_charrefs=True)
        self.page = page
        self.code_depth = 0  # inside <pre> or <code>
        self.heading = ""  # the id of the latest heading, for messages
        self.in_heading = False
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.page.ids.add(a["id"])
        if tag in ("pre", "code"):
            self.code_depth += 1
        if re.fullmatch(r"h[1-6]", tag):
            self.heading = a.get("id", self.heading)
        if tag == "blockquote":
            self.page.quotes.append(self.heading)
        if tag == "span" and "gp" in a.get("class", "").split():
            self.page.doctest_blocks += 1
        if tag == "a" and a.get("href"):
            self.page.links.append(a["href"])
        if tag == "link":
            rels = set(a.get("rel", "").lower().split())
            if rels & LINK_LOADS and a.get("href"):
                self.page.loads.append(a["href"])
        for attr in LOADERS.get(tag, ()):
            if a.get(attr):
                self.page.loads += [part.split()[0] for part in a[attr].split(",") if part.strip()]
        if "style" in a:
            self.page.loads += CSS_URL.findall(a["style"])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("pre", "code") and self.code_depth:
            self.code_depth -= 1

    def handle_data(self, data: str) -> None:
        if self.code_depth:
            return
        text = data.strip()
        if text.startswith(">>>") or "\n>>>" in data:
            self.page.prose_prompts.append(f"{self.heading}: {text[:60]!r}")
        if RAW_DIRECTIVE.search(data):
            self.page.raw_directives.append(f"{self.heading}: {text[:60]!r}")


def read(path: Path) -> Page:
    page = Page(path)
    reader = Reader(page)
    reader.feed(path.read_text(encoding="utf-8"))
    reader.close()
    return page


def pages_of(site: Path) -> list[Path]:
    """The site's pages; 404.html is served by a web server only, with absolute links."""
    return sorted(
        p
        for p in site.rglob("*.html")
        if "assets" not in p.relative_to(site).parts and p.name != "404.html"
    )


def resolve(site: Path, page: Path, href: str) -> tuple[Path | None, str]:
    """The file a relative link points to (None for other schemes) and its anchor."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or href.startswith(("mailto:", "javascript:", "data:")):
        return None, ""
    if not parts.path:
        return page, unquote(parts.fragment)
    return (page.parent / unquote(parts.path)).resolve(), unquote(parts.fragment)


def check(site: Path) -> tuple[list[str], dict[str, int]]:
    """Every problem of the site at ``site``, and a few counts for the summary."""
    site = site.resolve()
    problems: list[str] = []
    paths = pages_of(site)
    pages = {p.resolve(): read(p) for p in paths}
    counts = {"pages": len(pages), "example lines (>>>) in code": 0, "links": 0}
    for path, page in pages.items():
        name = str(path.relative_to(site))
        on_reference = path.relative_to(site).parts[0] == REFERENCE
        if on_reference:
            counts["example lines (>>>) in code"] += page.doctest_blocks
            for where in page.prose_prompts:
                problems.append(f"{name}: a docstring example rendered as text, not code ({where})")
            for where in page.quotes:
                problems.append(
                    f"{name}: a block quote (a '>>>' example read as quotes?) at #{where}"
                )
        for where in page.raw_directives:
            problems.append(f"{name}: an unexpanded directive in the text ({where})")
        for url in page.loads:
            if EXTERNAL.match(url):
                problems.append(f"{name}: loads {url} from another host")
        for href in page.links:
            target, anchor = resolve(site, path, href)
            if target is None:
                continue
            counts["links"] += 1
            if target.is_dir() or href.split("#")[0].endswith("/"):
                problems.append(f"{name}: links to a folder ({href}): it does not open from disk")
                continue
            if not target.exists():
                problems.append(f"{name}: links to {href}, which the site does not contain")
                continue
            if anchor and target.suffix == ".html":
                held = pages.get(target) or read(target)
                if anchor not in held.ids:
                    problems.append(f"{name}: links to {href}, whose page has no #{anchor}")
    for css in site.rglob("*.css"):
        for url in CSS_URL.findall(css.read_text(encoding="utf-8", errors="replace")):
            problems.append(f"{css.relative_to(site)}: loads {url} from another host")
    if not (site / "search" / "search_index.js").is_file():
        problems.append("search/search_index.js is missing: search will not work from disk")
    return problems, counts


def explain(problems: Iterable[str]) -> str:
    if any("rendered as text" in p or "block quote" in p for p in problems):
        return (
            "\nDocstring examples rendered as prose: griffe reads a Google-style examples "
            "section only under the header 'Examples:'. Rename the headers:\n  " + RENAME
        )
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, nargs="?", default=Path("site"))
    args = parser.parse_args(argv)
    if not (args.site / "index.html").is_file():
        print(f"no built site in {args.site}: run `make docs` first", file=sys.stderr)
        return 2
    problems, counts = check(args.site)
    for problem in problems:
        print(problem)
    print(explain(problems))
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    print(f"docs site: {summary}; {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
