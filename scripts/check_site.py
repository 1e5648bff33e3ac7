"""Open every page of the built docs site in headless Chromium and fail on what a reader sees.

For each page, opened from disk (``file://``, as a reader without a server or internet opens
it) at a 1280 × 900 viewport, after MathJax has typeset it and every collapsed block has been
opened, the check fails when

- a formula is left as raw TeX, or MathJax reports an error in it, or it shows a backslash
  (``\\text{fan\\_in}``), or it is wider than the text column;
- a table or a code block is wider than the text column (it would hide columns or the ends of
  lines behind a scrollbar);
- the page throws a JavaScript error, logs a console error, or fails to load a resource;
- the page requests anything from another host (the site must work without internet);

and, on the home page, when the search does not answer a query. It saves a screenshot of each
page (the first screen) into ``--out`` with a JSON report.

Only the Python standard library and a Chromium binary are needed: the browser is driven
through the DevTools protocol over a pipe (``--remote-debugging-pipe``). On Debian/Ubuntu:
``apt-get install chromium``. Usage::

    python scripts/check_site.py --site site --out build/site-check

Chromium runs in this process's process group, is told to die with this process
(``PR_SET_PDEATHSIG``) and is killed on every way out of this script (an error, a timeout,
SIGINT or SIGTERM), so it never outlives the check.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

MEASURE = r"""
(() => {
  const problems = [];
  const px = (n) => Math.round(n) + "px";
  const name = (el) => {
    const h = el.closest("section, .doc-object, article");
    let heading = "";
    for (let p = el; p && !heading; p = p.previousElementSibling || p.parentElement) {
      if (/^H[1-6]$/.test(p.tagName)) heading = p.textContent.replace("¶", "").trim();
    }
    return heading ? ` (under "${heading.slice(0, 60)}")` : "";
  };
  const wider = (el) => el.scrollWidth > el.clientWidth + 1;
  const column = document.querySelector("article.md-content__inner");
  if (!column) return {problems: ["no article: not a page of the site"], counts: {}};
  const width = column.clientWidth;

  // Formulas: typeset, without errors, without a visible backslash, within the column.
  const maths = [...document.querySelectorAll(".arithmatex")];
  for (const m of maths) {
    const box = m.querySelector("mjx-container");
    const tex = m.textContent.trim().slice(0, 80);
    if (!box) { problems.push(`raw TeX, not typeset: ${tex}${name(m)}`); continue; }
    if (box.querySelector("[data-mjx-error], mjx-merror, merror"))
      problems.push(`TeX error in formula${name(m)}: ${box.getAttribute("aria-label") || tex}`);
    const shown = [...box.querySelectorAll("svg text, mjx-assistive-mml mtext")]
      .map((t) => t.textContent).join(" ");
    if (shown.includes("\\")) problems.push(`a backslash shows in a formula${name(m)}: ${shown}`);
    const outer = m.tagName === "DIV" ? m : box;
    const edge = column.getBoundingClientRect().right + 1;
    if (wider(outer) || box.getBoundingClientRect().right > edge)
      problems.push(
        `formula wider than the column (${px(box.scrollWidth)} > ${px(width)})${name(m)}`);
  }

  // Tables: every column visible without scrolling.
  const tables = [...document.querySelectorAll(".md-typeset table")];
  for (const t of tables) {
    const wrap = t.closest(".md-typeset__scrollwrap") || t;
    if (wider(wrap) || t.getBoundingClientRect().width > width + 1) {
      const head = [...t.querySelectorAll("th")].map((th) => th.textContent.trim());
      problems.push(`table wider than the column (${px(t.scrollWidth)} > ${px(width)})` +
                    `${name(t)}: ${head.join(" | ").slice(0, 100)}`);
    }
  }

  // Code blocks: every line visible without scrolling.
  const codes = [...document.querySelectorAll(".md-typeset pre > code")];
  for (const c of codes) {
    if (wider(c)) {
      const lines = c.textContent.split("\n");
      const longest = lines.reduce((a, b) => (b.length > a.length ? b : a), "");
      problems.push(
        `code block wider than the column (${px(c.scrollWidth)} > ${px(c.clientWidth)})` +
        `${name(c)}: ${longest.trim().slice(0, 100)}`);
    }
  }

  // Images and other blocks that stick out of the column (Material's table wrappers reach
  // 0.8rem into the margins by design, so they are judged by their own scrolling above).
  const right = column.getBoundingClientRect().right + 1;
  const blocks = "img, iframe, video, .md-typeset > p, .md-typeset > ul, .md-typeset > ol";
  for (const el of column.querySelectorAll(blocks)) {
    if (el.getBoundingClientRect().right > right) {
      const what = (el.getAttribute("src") || el.textContent).trim().slice(0, 80);
      problems.push(`${el.tagName.toLowerCase()} wider than the column${name(el)}: ${what}`);
    }
  }

  return {problems, counts: {maths: maths.length, tables: tables.length, codes: codes.length,
                             column: width}};
})()
"""

OPEN_DETAILS = "document.querySelectorAll('details').forEach((d) => { d.open = true; }); true"

MATHJAX_READY = r"""
new Promise((resolve) => {
  const t0 = Date.now();
  const wait = () => {
    const mj = window.MathJax;
    if (!document.querySelector(".arithmatex")) return resolve("no maths");
    if (mj && mj.startup && mj.startup.promise)
      return mj.startup.promise.then(() => resolve("typeset"), (e) => resolve("error: " + e));
    if (Date.now() - t0 > %d) return resolve("MathJax never started");
    setTimeout(wait, 50);
  };
  wait();
})
"""

SEARCH_RESULTS = r"""
(() => {
  const meta = document.querySelector(".md-search-result__meta");
  const items = document.querySelectorAll(".md-search-result__item").length;
  return {meta: meta ? meta.textContent.trim() : null, items};
})()
"""


class CheckError(RuntimeError):
    """The browser could not be driven (not a finding about the site)."""


@dataclass
class PageResult:
    page: str
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (Linux: read from /proc), children first."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def using(profile: str) -> list[int]:
    """Processes whose command line names ``profile`` (Chromium's crash handler)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if profile.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the parent dies (Linux), so Chromium never outlives us."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Browser:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (fd 3: commands, fd 4: replies)."""

    def __init__(self, binary: str, width: int, height: int, deadline: float) -> None:
        self.deadline = deadline
        self.profile = tempfile.mkdtemp(prefix="gxd-docs-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [
            binary,
            "--headless=new",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
            "--hide-scrollbars",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            "--mute-audio",
            "about:blank",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox

        def child() -> None:
            # Move the pipe ends to fds 3 and 4 (via high numbers, so neither clobbers the other).
            a, b = os.dup(to_browser_r), os.dup(from_browser_w)
            a, b = os.dup2(a, 100), os.dup2(b, 101)
            os.dup2(a, 3)
            os.dup2(b, 4)
            _die_with_parent()

        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=child,  # the script is single-threaded
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def close(self) -> None:
        """End Chromium and every process it started, then remove its profile."""
        with contextlib.suppress(OSError):
            os.close(self._to_browser)
        with contextlib.suppress(OSError):
            os.close(self._from_browser)
        # The browser's processes, and its crash handler, which leaves the process group but
        # names the browser's profile on its command line.
        children = descendants(self.process.pid) + using(self.profile)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        for pid in children:  # renderers and helpers that have not exited with the browser
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        until = time.monotonic() + 5
        while time.monotonic() < until and any(_alive(pid) for pid in children):
            time.sleep(0.05)
        shutil.rmtree(self.profile, ignore_errors=True)

    def _read_message(self, until: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = min(until, self.deadline) - time.monotonic()
            if left <= 0:
                raise TimeoutError("the browser did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise CheckError("Chromium closed its DevTools pipe (did it crash?)")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Send a command and wait for its reply; events that arrive meanwhile are kept."""
        self._next_id += 1
        ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        until = time.monotonic() + timeout
        while True:
            reply = self._read_message(until)
            if reply.get("id") == ident:
                if "error" in reply:
                    raise CheckError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, timeout: float) -> dict[str, Any] | None:
        """Wait for an event (or one already received); None after ``timeout`` seconds."""
        until = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event["method"] == method:
                    return self.events.pop(i)
            try:
                self.events.append(self._read_message(until))
            except TimeoutError:
                if time.monotonic() >= self.deadline:
                    raise
                return None


@contextlib.contextmanager
def browser(binary: str, width: int, height: int, deadline: float) -> Iterator[Browser]:
    """A started browser, closed on every way out (errors, timeouts, SIGINT, SIGTERM)."""

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    b = Browser(binary, width, height, deadline)
    try:
        yield b
    finally:
        b.close()
        for s, handler in previous.items():
            signal.signal(s, handler)


def evaluate(b: Browser, session: str, expression: str, timeout: float = 20.0) -> Any:
    result = b.send(
        "Runtime.evaluate",
        {"expression": expression, "returnByValue": True, "awaitPromise": True},
        session,
        timeout=timeout,
    )
    if "exceptionDetails" in result:
        raise CheckError(f"script failed: {result['exceptionDetails'].get('text')}")
    return result["result"].get("value")


def page_errors(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions, failed loads and external requests in ``events``."""
    found = []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text")
            found.append(f"JavaScript error: {str(text).splitlines()[0]}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            found.append(f"console error: {args[:200]}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            found.append(f"browser error: {entry.get('text', '')[:200]} {entry.get('url', '')}")
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if url.startswith(("http://", "https://", "ws://", "wss://", "//")):
                found.append(f"request to another host: {url}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            found.append(f"failed to load a resource: {params.get('errorText')}")
    return found


def check_page(
    b: Browser,
    session: str,
    url: str,
    shot: Path | None,
    page_timeout: float,
    full_page: bool = False,
) -> PageResult:
    result = PageResult(page=url)
    start = time.monotonic()
    b.events.clear()
    b.send("Page.navigate", {"url": url}, session)
    if b.wait_event("Page.loadEventFired", page_timeout) is None:
        result.problems.append(f"the page did not finish loading in {page_timeout:.0f} s")
        return result
    state = evaluate(b, session, MATHJAX_READY % int(page_timeout * 1000), page_timeout + 5)
    if state not in ("no maths", "typeset"):
        result.problems.append(f"MathJax: {state}")
    evaluate(b, session, OPEN_DETAILS)
    evaluate(b, session, "new Promise((r) => requestAnimationFrame(() => setTimeout(r, 50)))")
    measured = evaluate(b, session, MEASURE)
    result.problems += measured["problems"]
    result.counts = measured["counts"]
    if shot is not None:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = b.send("Page.getLayoutMetrics", {}, session)["cssContentSize"]
            params["captureBeyondViewport"] = True
            params["clip"] = {
                "x": 0,
                "y": 0,
                "width": size["width"],
                "height": min(size["height"], 16000),
                "scale": 1,
            }
        data = b.send("Page.captureScreenshot", params, session)["data"]
        shot.parent.mkdir(parents=True, exist_ok=True)
        shot.write_bytes(base64.b64decode(data))
    b.wait_event("Page.__settle__", 0.05)  # collect events that arrived late
    result.problems += page_errors(b.events)
    result.seconds = time.monotonic() - start
    return result


def check_search(b: Browser, session: str, url: str, query: str, timeout: float) -> list[str]:
    """Type ``query`` into the search box of ``url``; problems if no result shows."""
    b.events.clear()
    b.send("Page.navigate", {"url": url}, session)
    if b.wait_event("Page.loadEventFired", timeout) is None:
        return ["search: the home page did not load"]
    evaluate(b, session, "document.querySelector('[data-md-component=search-query]').focus()")
    b.send("Input.insertText", {"text": query}, session)
    until = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < until:
        state = evaluate(b, session, SEARCH_RESULTS)
        if state.get("items"):
            return page_errors(b.events)
        time.sleep(0.1)
    return [f"search for {query!r} showed no results in {timeout:.0f} s: {state.get('meta')!r}"]


def find_browser(explicit: str | None) -> str:
    for candidate in ([explicit] if explicit else []) + list(BROWSERS):
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    raise CheckError(
        "no Chromium found: install it (Debian/Ubuntu: apt-get install chromium) "
        "or pass --browser PATH"
    )


def pages_of(site: Path, only: list[str]) -> list[Path]:
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html")
    pages = [p for p in pages if "assets" not in p.relative_to(site).parts]
    if only:
        pages = [p for p in pages if any(o in str(p.relative_to(site)) for o in only)]
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=ROOT / "site", help="the built site")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "build" / "site-check", help="screenshots"
    )
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--browser", help="Chromium binary (default: the first on PATH)")
    parser.add_argument(
        "--page", action="append", default=[], help="only pages whose path has this"
    )
    parser.add_argument("--page-timeout", type=float, default=20.0, help="seconds per page")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the whole check")
    parser.add_argument("--no-screenshots", action="store_true")
    parser.add_argument("--full-page", action="store_true", help="screenshots of whole pages")
    args = parser.parse_args(argv)

    site = args.site.resolve()
    if not (site / "index.html").is_file():
        print(f"no built site in {site}: run `make docs` first", file=sys.stderr)
        return 2
    try:
        binary = find_browser(args.browser)
    except CheckError as error:
        print(error, file=sys.stderr)
        return 2
    pages = pages_of(site, args.page)
    start = time.monotonic()
    deadline = start + args.timeout
    results: list[PageResult] = []
    try:
        with browser(binary, args.width, args.height, deadline) as b:
            target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log", "Network"):
                b.send(f"{domain}.enable", {}, session)
            b.send(
                "Emulation.setDeviceMetricsOverride",
                {
                    "width": args.width,
                    "height": args.height,
                    "deviceScaleFactor": 1,
                    "mobile": False,
                },
                session,
            )
            for page in pages:
                name = str(page.relative_to(site))
                shot = None if args.no_screenshots else args.out / (name[:-5] + ".png")
                result = check_page(
                    b, session, page.as_uri(), shot, args.page_timeout, args.full_page
                )
                result.page = name
                results.append(result)
                status = "ok" if not result.problems else f"{len(result.problems)} problem(s)"
                print(f"{name:<40} {result.seconds:5.1f} s  {status}", flush=True)
            if not args.page or any(p.name == "index.html" for p in pages):
                search = PageResult(page="search (index.html, from disk)")
                search.problems = check_search(
                    b, session, (site / "index.html").as_uri(), "checkpoint", args.page_timeout
                )
                results.append(search)
                print(f"{search.page:<40} {'ok' if not search.problems else 'FAILED'}")
    except (TimeoutError, CheckError) as error:
        print(f"site check aborted: {error}", file=sys.stderr)
        return 2
    elapsed = time.monotonic() - start
    failed = [r for r in results if r.problems]
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "seconds": round(elapsed, 1),
        "viewport": [args.width, args.height],
        "pages": [r.__dict__ for r in results],
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    for r in failed:
        print(f"\n{r.page}:")
        for problem in r.problems:
            print(f"  - {problem}")
    print(
        f"\nsite check: {len(results) - len(failed)} of {len(results)} checks clean "
        f"({len(pages)} pages at {args.width}x{args.height}, {elapsed:.0f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
