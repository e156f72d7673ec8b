"""Build the SegDepth tutorial book (Jupyter Book 1: Sphinx + MyST-NB) from the repository as it is.

    python docs/book/build.py [--out DIR] [--strict] [--repo-url URL] [--clean]

Assembles a source tree under DIR/_build/src with the repository's layout, so relative links keep their
meaning: README.md as the landing page (index.md), the committed notebooks/NN_*.ipynb (never executed:
they are shown with the outputs they carry), docs/*.md, data/raw/README.md, data/results/*.md (given a
title) and figures/; then runs `jupyter-book build` into DIR/_build/html (DIR defaults to docs/book).

Relative links and images in the Markdown (README, docs, notebook Markdown cells) are checked and
rewritten: a notebook's jupytext source `notebooks/NN_name.py` becomes its rendered page, paths of the
book stay as they are, and a file that is not in the book (Makefile, segdepth/...) becomes a link to
`--repo-url`/PATH when given, else inline code. A link to nothing is an error with --strict (which also
makes every Sphinx warning an error). Inline code that names a book page or figure (`figures/fig6_x.png`,
`data/results/table1_lam2.5.md`, `03_evaluation.py`) becomes a link to it, and in a table with a
"notebook" column a bare step number (`03`) links to that notebook's page.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BOOK_DIR = Path(__file__).resolve().parent
REPO = BOOK_DIR.parents[1]
CONFIG_FILES = ("_config.yml", "_toc.yml")
FIGURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg"}

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
# A link or image with one level of brackets inside its text (a badge: [![alt](img)](url)), or a code span.
_INLINE = re.compile(
    r"(?P<link>(?P<bang>!?)\[(?P<text>(?:[^\[\]]|\[[^\[\]]*\](?:\([^()\s]*\))?)*)\]"
    r"\((?P<target><[^<>]*>|[^()\s]*)(?P<title>\s+\"[^\"]*\")?\))"
    r"|(?P<code>(?P<ticks>`+)(?P<content>.+?)(?P=ticks))"
)
_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_BRACES = re.compile(r"^(?P<head>[^{}]*)\{(?P<alts>[^{}]+)\}(?P<tail>[^{}]*)$")
_NOTEBOOK = re.compile(r"^\d\d_[A-Za-z0-9_]+$")


@dataclass
class Book:
    """What goes into the book: page and asset paths (repository-relative, posix) -> their source file."""

    repo: Path
    repo_url: str | None = None
    pages: dict[str, Path] = field(default_factory=dict)
    assets: dict[str, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def collect(cls, repo: Path, repo_url: str | None = None) -> Book:
        book = cls(repo=repo, repo_url=repo_url.rstrip("/") if repo_url else None)
        book.pages["index.md"] = repo / "README.md"
        for nb in sorted((repo / "notebooks").glob("[0-9][0-9]_*.ipynb")):
            book.pages[f"notebooks/{nb.name}"] = nb
        for md in [*sorted((repo / "docs").glob("*.md")), repo / "data/raw/README.md",
                   *sorted((repo / "data/results").glob("*.md"))]:
            if md.is_file():
                book.pages[md.relative_to(repo).as_posix()] = md
        for fig in sorted((repo / "figures").rglob("*")):
            if fig.is_file() and fig.suffix.lower() in FIGURE_SUFFIXES:
                book.assets[fig.relative_to(repo).as_posix()] = fig
        return book

    # --- paths ---------------------------------------------------------------------------------------
    def in_book(self, path: str) -> str | None:
        """The book path a repository path is shown at, or None."""
        if path == "README.md":
            return "index.md"
        if path in self.pages or path in self.assets:
            return path
        stem, suffix = posixpath.splitext(path)
        if suffix == ".py" and f"{stem}.ipynb" in self.pages:  # a jupytext source: its rendered notebook
            return f"{stem}.ipynb"
        return None

    def find(self, name: str, rel_dir: str, last_dir: str | None) -> str | None:
        """The book path inline code `name` refers to (a page or a figure), or None."""
        m = _BRACES.match(name)
        alternatives = [m["head"] + alt + m["tail"] for alt in m["alts"].split(",")] if m else [name]
        for alt in alternatives:
            candidates = [posixpath.normpath(posixpath.join(rel_dir, alt)), posixpath.normpath(alt)]
            if "/" not in alt:
                if last_dir:  # `figures/fig10_a.png`, `fig11_b.png`: the second in the first one's folder
                    candidates.append(posixpath.join(last_dir, alt))
                if _NOTEBOOK.match(posixpath.splitext(alt)[0]):
                    candidates.append(f"notebooks/{alt}")
            for cand in candidates:
                hit = self.in_book(cand)
                if hit and (hit in self.pages or Path(hit).suffix.lower() in FIGURE_SUFFIXES):
                    return hit
        return None

    def notebook_page(self, step: str) -> str | None:
        hits = [p for p in self.pages if p.startswith(f"notebooks/{step}_") and p.endswith(".ipynb")]
        return hits[0] if len(hits) == 1 else None

    # --- Markdown rewriting --------------------------------------------------------------------------
    def rewrite(self, text: str, rel_dir: str, where: str) -> str:
        """Rewrite the relative links of one Markdown text whose file sits at rel_dir (repository-relative)."""
        out, fence, header = [], None, None
        lines = text.split("\n")
        for i, line in enumerate(lines):
            m = _FENCE.match(line)
            if fence:
                closing = line.strip()
                if set(closing) == {fence[0]} and len(closing) >= len(fence):
                    fence = None
                out.append(line)
                continue
            if m:
                fence = m.group(1)
                out.append(line)
                continue
            if line.lstrip().startswith("|"):
                nxt = lines[i + 1] if i + 1 < len(lines) else ""
                if _TABLE_SEPARATOR.match(nxt):
                    header = [c.strip().lower() for c in line.split("|")]
                elif not _TABLE_SEPARATOR.match(line) and header:
                    line = self._notebook_column(line, header, rel_dir)
            else:
                header = None
            out.append(self._inline(line, rel_dir, where))
        return "\n".join(out)

    def _notebook_column(self, line: str, header: list[str], rel_dir: str) -> str:
        cells = line.split("|")
        for col, name in enumerate(header):
            if name == "notebook" and col < len(cells) and re.fullmatch(r"\s*\d\d\s*", cells[col]):
                page = self.notebook_page(cells[col].strip())
                if page:
                    cells[col] = f" [{cells[col].strip()}]({self._relative(page, rel_dir)}) "
        return "|".join(cells)

    def _relative(self, path: str, rel_dir: str) -> str:
        return posixpath.relpath(path, rel_dir or ".")

    def _inline(self, line: str, rel_dir: str, where: str, code_links: bool = True) -> str:
        last_dir: list[str | None] = [None]

        def repl(m: re.Match) -> str:
            if m["code"]:
                if not code_links:  # inside a link's text: no link within a link
                    return m[0]
                content = m["content"].strip()
                if " " in content or len(m["ticks"]) > 1:
                    return m[0]
                hit = self.find(content, rel_dir, last_dir[0])
                if "/" in content:
                    last_dir[0] = posixpath.dirname(content)
                return f"[{m[0]}]({self._relative(hit, rel_dir)})" if hit else m[0]
            return self._link(m, rel_dir, where)

        return _INLINE.sub(repl, line)

    def _link(self, m: re.Match, rel_dir: str, where: str) -> str:
        text = m["text"] if m["bang"] else self._inline(m["text"], rel_dir, where, code_links=False)
        target = m["target"].strip("<>")
        title = m["title"] or ""
        if not target or target.startswith(("#", "/")) or _SCHEME.match(target):
            return f"{m['bang']}[{text}]({m['target']}{title})"
        path, _, frag = target.partition("#")
        path = path.split("?")[0]
        repo_path = posixpath.normpath(posixpath.join(rel_dir, path))
        frag = f"#{frag}" if frag else ""
        hit = self.in_book(repo_path)
        if hit:
            return f"{m['bang']}[{text}]({self._relative(hit, rel_dir)}{frag}{title})"
        exists = (self.repo / repo_path).exists() and not repo_path.startswith("..")
        if not exists:
            self.problems.append(f"{where}: link to a missing file: {target}")
            return m[0]
        if m["bang"]:  # an image outside figures/: take it into the book
            self.assets[repo_path] = self.repo / repo_path
            return f"![{text}]({self._relative(repo_path, rel_dir)}{title})"
        if self.repo_url:
            return f"[{text}]({self.repo_url}/{repo_path}{frag})"
        code = f"`{repo_path}`"
        return code if text.strip("`") == repo_path else f"{text} ({code})"

    # --- the source tree -----------------------------------------------------------------------------
    def render(self) -> dict[str, bytes]:
        """Every file of the source tree: book path -> content."""
        files: dict[str, bytes] = {}
        for name in CONFIG_FILES:
            files[name] = (BOOK_DIR / name).read_bytes()
        for path, src in self.pages.items():
            rel_dir = posixpath.dirname(path)
            where = src.relative_to(self.repo).as_posix()
            if path.endswith(".ipynb"):
                nb = json.loads(src.read_text(encoding="utf-8"))
                for cell in nb.get("cells", []):
                    if cell.get("cell_type") == "markdown":
                        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                        cell["source"] = self.rewrite(source, rel_dir, where)
                files[path] = (json.dumps(nb, indent=1, ensure_ascii=False) + "\n").encode()
                continue
            text = self.rewrite(src.read_text(encoding="utf-8"), rel_dir, where)
            if not re.search(r"^# ", text, flags=re.M):  # result tables have no title of their own
                text = f"# {posixpath.basename(path)}\n\n{text}"
            files[path] = text.encode()
        for path, src in self.assets.items():  # after the pages: they may add images
            files[path] = src.read_bytes()
        return files


def sync_tree(files: dict[str, bytes], root: Path) -> int:
    """Make root hold exactly `files`, rewriting only what changed (so Sphinx rebuilds only that)."""
    root.mkdir(parents=True, exist_ok=True)
    changed = 0
    for path, data in files.items():
        dest = root / path
        if dest.is_file() and dest.read_bytes() == data:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        changed += 1
    for dest in sorted(root.rglob("*"), reverse=True):
        rel = dest.relative_to(root).as_posix()
        if dest.is_file() and rel not in files:
            dest.unlink()
        elif dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
    return changed


def build(out: Path = BOOK_DIR, *, strict: bool = False, repo_url: str | None = None, clean: bool = False,
          repo: Path = REPO, quiet: bool = False) -> Path:
    """Assemble the source tree and build the HTML book; returns the html directory."""
    out = Path(out).resolve()
    build_dir = out / "_build"
    if clean and build_dir.exists():
        shutil.rmtree(build_dir)
    t0 = time.perf_counter()
    book = Book.collect(repo, repo_url)
    files = book.render()
    for problem in book.problems:
        print(f"build.py: {problem}", file=sys.stderr)
    if strict and book.problems:
        raise SystemExit(f"build.py: {len(book.problems)} broken link(s)")
    src = build_dir / "src"
    sync_tree(files, src)
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(src),
           "--path-output", str(out), "--builder", "html"]
    if strict:
        cmd += ["--warningiserror", "--keep-going"]
    if quiet:
        cmd += ["--quiet"]
    env = {**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    result = subprocess.run(cmd, env=env)
    if result.returncode:
        raise SystemExit(f"build.py: jupyter-book build failed (exit {result.returncode})")
    html = build_dir / "html"
    n_pages = sum(1 for p in html.rglob("*.html") if not p.relative_to(html).parts[0].startswith("_"))
    print(f"build.py: {n_pages} pages in {html} ({time.perf_counter() - t0:.0f} s)")
    return html


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=BOOK_DIR,
                        help="output folder: source in OUT/_build/src, HTML in OUT/_build/html (default docs/book)")
    parser.add_argument("--strict", action="store_true", help="fail on a broken link or any Sphinx warning")
    parser.add_argument("--repo-url", default=os.environ.get("SEGDEPTH_REPO_URL"),
                        help="prefix for links to files not in the book, e.g. https://github.com/OWNER/segdepth/blob/main"
                             " (default $SEGDEPTH_REPO_URL; without it such links become inline code)")
    parser.add_argument("--clean", action="store_true", help="remove OUT/_build first")
    parser.add_argument("--quiet", action="store_true", help="less Sphinx output")
    args = parser.parse_args(argv)
    build(args.out, strict=args.strict, repo_url=args.repo_url, clean=args.clean, quiet=args.quiet)


if __name__ == "__main__":
    main()
