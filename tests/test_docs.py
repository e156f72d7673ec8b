"""The rendered tutorial book (issue 14, "Reading"): built with docs/book/build.py, served over HTTP and
read in a real headless Chromium. Every page's images load (those served by the book; external ones,
the README's Binder badge, are not checked: the test runs offline), every internal link answers 200 (and its
#fragment exists on the page it names), the landing page is the README with its paper-figure table
linking into the notebook pages, and notebook 06 shows the figures it carries."""

from __future__ import annotations

import functools
import importlib.util
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urldefrag, urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

needs_chromium = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                    reason="needs Debian's chromium and chromedriver")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the signature of the base class
        pass


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """Build the book once (strict: any Sphinx warning or broken source link fails) and serve it."""
    pytest.importorskip("jupyter_book")
    out = tmp_path_factory.mktemp("book")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "docs/book/build.py"), "--out", str(out), "--strict", "--quiet"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, f"build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    print(f"book built in {time.perf_counter() - t0:.0f} s")
    html = out / "_build" / "html"
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(html)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield html, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1024"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _pages(html: Path) -> list[str]:
    """Every built HTML page (not the theme's static files), as paths relative to the root."""
    return sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")
                  if not p.relative_to(html).parts[0].startswith("_"))


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as err:
        err.close()
        return err.code


_IMAGES_JS = """
const imgs = Array.from(document.images);
imgs.forEach(img => { img.loading = 'eager'; });
return imgs.map(img => [img.currentSrc || img.src, img.complete, img.naturalWidth]);
"""
_LINKS_JS = """
const main = document.querySelector('article') || document.body;
const inMain = new Set(Array.from(main.querySelectorAll('a[href]')));
const out = [];
document.querySelectorAll('a[href], link[href]').forEach(a => out.push([a.href, inMain.has(a)]));
document.querySelectorAll('script[src]').forEach(s => out.push([s.src, false]));
return out;
"""


def _images(driver, timeout: float = 15.0) -> list[list]:
    """[src, complete, naturalWidth] of every <img>, waiting for them to finish loading."""
    deadline = time.monotonic() + timeout
    while True:
        images = driver.execute_script(_IMAGES_JS)
        if all(complete for _, complete, _ in images) or time.monotonic() > deadline:
            return images
        time.sleep(0.2)


def _readme_title() -> str:
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    raise AssertionError("README.md has no title")


def _readme_figure_notebooks() -> set[str]:
    """The step numbers of the notebook column of README's "Paper figures and tables"."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Paper figures and tables", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\|[^|\n]*\|\s*(\d\d)\s*\|", section, flags=re.M))


@pytest.mark.slow
@needs_chromium
def test_book_in_a_browser(book, browser):
    html, base = book
    pages = _pages(html)
    assert "index.html" in pages
    notebooks = sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for nb in notebooks:
        assert f"notebooks/{Path(nb).stem}.html" in pages, f"no page for {nb}"

    broken_images, links, fragments, external_images, n_images = [], {}, [], set(), 0
    page_text: dict[str, str] = {}
    for page in pages:
        browser.get(base + page)
        for src, complete, width in _images(browser):
            if urlparse(src).netloc != urlparse(base).netloc:
                external_images.add(src)  # the README's Binder badge: this test runs offline
                continue
            n_images += 1
            if not (complete and width > 0):
                broken_images.append(f"{page}: {src}")
        for href, in_main in browser.execute_script(_LINKS_JS):
            url, frag = urldefrag(href)
            if urlparse(url).netloc != urlparse(base).netloc or not url.startswith("http"):
                continue
            links.setdefault(url, page)
            if frag and in_main:
                fragments.append((page, url, frag))
        if page == "index.html":
            title = browser.execute_script("const h = document.querySelector('article h1'); return h && h.textContent;")
            assert (title or "").strip().rstrip("#\u00b6").strip() == _readme_title()
            table = browser.execute_script(
                "const s = document.getElementById('paper-figures-and-tables');"
                " return s ? Array.from(s.querySelectorAll('table a[href]')).map(a => a.href) : null;")
            assert table, "no links in the paper-figure table of the landing page"
            linked = {m.group(1) for h in table if (m := re.search(r"/notebooks/(\d\d)_[^/]+\.html$", urldefrag(h)[0]))}
            assert _readme_figure_notebooks() <= linked, f"figure table links to notebooks {sorted(linked)}"
            for h in table:
                links.setdefault(urldefrag(h)[0], page)
        if page == "notebooks/06_real_data.html":
            n_figures = browser.execute_script(
                "return Array.from(document.querySelectorAll('.cell_output img'))"
                ".filter(i => i.complete && i.naturalWidth > 0).length;")
            assert n_figures >= 1, "notebook 06 shows no figure"

    assert not broken_images, "images that did not load:\n" + "\n".join(broken_images)
    bad = [f"{url} (from {page}): {code}" for url, page in sorted(links.items()) if (code := _status(url)) != 200]
    assert not bad, "internal links that do not answer 200:\n" + "\n".join(bad)
    missing = []
    for page, url, frag in fragments:
        path = urlparse(url).path.lstrip("/") or "index.html"
        target = html / path
        if target.suffix != ".html":
            continue
        text = page_text.setdefault(path, target.read_text(encoding="utf-8"))
        if f'id="{frag}"' not in text:
            missing.append(f"{page}: {url}#{frag}")
    assert not missing, "links to anchors that do not exist:\n" + "\n".join(missing)
    print(f"{len(pages)} pages, {n_images} images, {len(links)} internal links, {len(fragments)} anchors checked; "
          f"external images not checked: {sorted(external_images)}")


def test_build_script_rewrites_links():
    """The link rewriting alone (no Sphinx): sources to pages, missing files reported, outside files to code."""
    spec = importlib.util.spec_from_file_location("segdepth_book_build", REPO / "docs" / "book" / "build.py")
    build = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = build  # dataclasses look their module up there
    spec.loader.exec_module(build)
    book = build.Book.collect(REPO)
    text = "\n".join([
        "[quick](notebooks/00_quickstart.py) [conv](docs/conventions.md#top) ![f](figures/fig6_confusion.png)",
        "[make](Makefile) [gone](figures/no_such_figure.png) `figures/fig7_calibration.png` [x](https://a.b/c)",
        "| paper | notebook | file |", "| --- | --- | --- |", "| Fig. 6 | 03 | `figures/fig6_confusion.png` |",
        "```", "[not a link](notebooks/00_quickstart.py) `figures/fig7_calibration.png`", "```",
    ])
    out = book.rewrite(text, "", "test").split("\n")
    assert out[0] == ("[quick](notebooks/00_quickstart.ipynb) [conv](docs/conventions.md#top) "
                      "![f](figures/fig6_confusion.png)")
    assert out[1].startswith("make (`Makefile`) [gone](figures/no_such_figure.png) "
                             "[`figures/fig7_calibration.png`](figures/fig7_calibration.png) [x](https://a.b/c)")
    assert book.problems == ["test: link to a missing file: figures/no_such_figure.png"]
    assert out[4].startswith("| Fig. 6 | [03](notebooks/03_evaluation.ipynb) |")
    assert out[5:] == text.split("\n")[5:]  # fenced code is left alone
    assert book.rewrite("[back](../README.md)", "notebooks", "t") == "[back](../index.md)"
