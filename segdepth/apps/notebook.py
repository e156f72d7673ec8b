"""Run the jupytext notebooks with papermill (used by ``make`` and the tests).

papermill cannot execute a jupytext percent script directly: the script is read
with :func:`jupytext.read` and the notebook object is handed to
:func:`papermill.execute_notebook`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["run_notebook", "main"]

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Execute a SegDepth notebook with papermill")
    ap.add_argument("notebook")
    ap.add_argument("-o", "--output")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "JSON_VALUE"),
                    help="parameter value as JSON (strings may be given bare)")
    ap.add_argument("--cwd", help="working directory of the kernel (default: the repository root)")
    args = ap.parse_args(argv)
    params = {}
    for name, value in args.parameter:
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    out = run_notebook(args.notebook, args.output, params, cwd=args.cwd)
    print(f"executed {args.notebook} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
