"""Run the jupytext notebooks with papermill (used by ``make`` and the tests).

papermill cannot execute a jupytext percent script directly: the script is read
with :func:`jupytext.read` and the notebook object is handed to
:func:`papermill.execute_notebook`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["run_notebook", "outputs_into_pair", "same_cells", "main"]

REPO = Path(__file__).resolve().parents[2]


def run_notebook(source, output=None, parameters: dict | None = None, *, cwd=None, kernel_name: str = "python3"):
    """Execute ``source`` (a ``.py`` percent script or ``.ipynb``) with ``parameters``.

    Parameters
    ----------
    source : path
        Notebook (jupytext percent ``.py`` or ``.ipynb``).
    output : path, optional
        Where to write the executed notebook (default ``notebooks/executed/<name>.ipynb``).
    parameters : dict, optional
        Values injected after the cell tagged ``parameters``.
    cwd : path, optional
        Working directory of the kernel (default: the repository root, so that the
        notebooks' relative paths such as ``data/`` and ``figures/`` resolve).
    """
    import jupytext
    import papermill

    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"notebook {source} does not exist")
    nb = jupytext.read(source)
    output = Path(output) if output else REPO / "notebooks" / "executed" / (source.stem + ".ipynb")
    from segdepth.data.store import atomic_write

    def execute(tmp):
        papermill.execute_notebook(
            nb, tmp, parameters=parameters or {}, cwd=str(cwd or REPO), kernel_name=kernel_name, progress_bar=False,
            language="python",
        )

    return atomic_write(output, execute, suffix=".ipynb")


def _cells(nb) -> list[tuple[str, str]]:
    """(type, source) of every cell but papermill's injected-parameters cell."""
    return [(c.cell_type, c.source.strip()) for c in nb.cells
            if "injected-parameters" not in c.metadata.get("tags", [])]


def same_cells(a, b) -> bool:
    """Whether two notebooks (paths or nbformat objects) have the same cells, outputs and metadata aside."""
    import jupytext

    a, b = (jupytext.read(x) if isinstance(x, str | Path) else x for x in (a, b))
    return _cells(a) == _cells(b)


def outputs_into_pair(source, executed, *, parameters: dict | None = None) -> Path:
    """Copy the outputs of ``executed`` into the ``.ipynb`` paired with the percent script ``source``.

    The paired notebook keeps its cells (those of ``source``) and its jupytext metadata; every code
    cell gets the outputs of the same cell of the executed run, and the notebook's metadata records
    the run (``segdepth_outputs``: parameters, date). Refuses when the executed run's cells differ
    from ``source`` (a stale run). Written atomically.
    """
    import datetime

    import jupytext
    import nbformat

    source = Path(source)
    pair = source.with_suffix(".ipynb")
    src = jupytext.read(source)
    run = nbformat.read(str(executed), as_version=4)
    if not same_cells(src, run):
        raise ValueError(f"{executed} was not run from the current {source} (cells differ); run it again")
    run_cells = [c for c in run.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    out = jupytext.read(pair) if pair.exists() else src
    if not same_cells(out, src):
        out = src
    for cell, ran in zip(out.cells, run_cells, strict=True):
        if cell.cell_type == "code":
            cell.outputs = ran.get("outputs", [])
            cell.execution_count = ran.get("execution_count")
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    out.metadata["segdepth_outputs"] = {"parameters": parameters or {}, "executed": now}
    out.metadata.setdefault("jupytext", {})["formats"] = "ipynb,py:percent"
    from segdepth.data.store import atomic_write

    return atomic_write(pair, lambda tmp: nbformat.write(out, tmp), suffix=".ipynb")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Execute a SegDepth notebook with papermill")
    ap.add_argument("notebook")
    ap.add_argument("-o", "--output")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "JSON_VALUE"),
                    help="parameter value as JSON (strings may be given bare)")
    ap.add_argument("--cwd", help="working directory of the kernel (default: the repository root)")
    ap.add_argument("--into-pair", action="store_true",
                    help="also copy the outputs into the committed .ipynb paired with the .py source")
    args = ap.parse_args(argv)
    params = {}
    for name, value in args.parameter:
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    out = run_notebook(args.notebook, args.output, params, cwd=args.cwd)
    print(f"executed {args.notebook} -> {out}")
    if args.into_pair:
        print(f"outputs -> {outputs_into_pair(args.notebook, out, parameters=params)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
