"""Batch reruns of a notebook over a grid of parameters, merged into one xarray dataset.

The user's main way of working with the repository is to re-run a notebook for
another value of a parameter (a test dose, a training dose, a model size).
:func:`run_grid` does that for a whole grid:

- every grid point runs the notebook through papermill in its own process
  (``python -m segdepth.apps.notebook``), up to ``workers`` at a time;
- the executed notebook goes to ``notebooks/executed/<notebook>/<point>.ipynb``
  and its log beside it (``.log``);
- the notebook writes its result as netCDF to the path given by its
  ``result`` parameter (by default ``<out_dir>/<point>.nc``);
- a point whose result file already exists is skipped (results are written
  atomically, so an existing file is a complete one): re-running the same
  command after a kill or a failure runs only what is missing;
- a failed point (the notebook raised, or it ended without writing its result)
  is reported with its parameters and the tail of its log, and never stops or
  touches the others;
- the results of all finished points are merged along the swept coordinates
  (:func:`merge_results`) and written atomically to ``merged``.

String parameters may refer to the grid point's values with ``{name}``
(:meth:`str.format` fields), e.g. ``model_out="data/models/base8_lam{lam}.safetensors"``.

Command line::

    python -m segdepth.apps.batch notebooks/04_noise_generalization.py \\
        --grid test_lams 0.05 0.1 0.25 --dim test_lams=test_lambda \\
        --out-dir data/results/noise_sweep --merged data/results/noise_generalization.nc --workers 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunResult", "expand_grid", "point_key", "run_grid", "merge_results", "main"]

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunResult:
    """Outcome of one grid point.

    Attributes
    ----------
    point : dict
        The swept parameters of this run.
    parameters : dict
        All parameters handed to the notebook (templates filled in).
    status : {"done", "skipped", "failed"}
        ``"skipped"``: the result existed before this call.
    result : Path
        The netCDF result file.
    executed : Path
        The executed notebook.
    message : str
        For a failure, what went wrong (with the tail of the log).
    seconds : float
        Wall-clock time of the run.
    """

    point: dict[str, Any]
    parameters: dict[str, Any]
    status: str
    result: Path
    executed: Path
    message: str = ""
    seconds: float = 0.0
    log: Path | None = field(default=None, repr=False)


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """All combinations of the grid's values (the last name varies fastest).

    Raises ``ValueError`` for an empty grid, an empty value list or repeated values.
    """
    if not grid:
        raise ValueError("the grid is empty: give at least one parameter with its values")
    for name, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"grid parameter {name!r} needs a non-empty list of values, got {values!r}")
        keys = [json.dumps(v, sort_keys=True) for v in values]
        if len(set(keys)) != len(keys):
            raise ValueError(f"grid parameter {name!r} has repeated values: {list(values)}")
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def _value_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:  # 10.0 -> "10"
        value = int(value)
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ""))
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(text)).strip("-") or "empty"


def point_key(point: Mapping[str, Any]) -> str:
    """A file-name-safe name of a grid point, e.g. ``lam=2.5_base=8``."""
    return "_".join(f"{name}={_value_text(value)}" for name, value in point.items())


def _fill(value: Any, point: Mapping[str, Any]) -> Any:
    """Fill ``{name}`` fields of string parameters (recursively in lists and dicts)."""
    if isinstance(value, str):
        try:
            return value.format_map({k: _value_text(v) for k, v in point.items()})
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"parameter template {value!r} refers to {err}, which is not a grid parameter") from None
    if isinstance(value, list):
        return [_fill(v, point) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, point) for k, v in value.items()}
    return value


def _tail(path: Path, n_lines: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    keep = [line for line in lines if "Kernel is running over TCP" not in line]
    return "\n".join(keep[-n_lines:])


def _run_one(notebook: Path, run: RunResult, *, cwd: Path, threads: int) -> RunResult:
    run.executed.parent.mkdir(parents=True, exist_ok=True)
    run.result.parent.mkdir(parents=True, exist_ok=True)
    run.log = run.executed.with_suffix(".log")
    cmd = [sys.executable, "-m", "segdepth.apps.notebook", str(notebook), "-o", str(run.executed), "--cwd", str(cwd)]
    for name, value in run.parameters.items():
        cmd += ["-p", name, json.dumps(value)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    started = time.monotonic()
    with open(run.log, "w") as log:
        proc = subprocess.run(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    run.seconds = time.monotonic() - started
    if proc.returncode != 0:
        run.status = "failed"
        run.message = f"notebook exited with code {proc.returncode}; log {run.log}:\n{_tail(run.log)}"
    elif not run.result.exists():
        run.status = "failed"
        run.message = f"notebook finished but did not write its result {run.result} (log {run.log})"
    else:
        run.status = "done"
    return run


def merge_results(paths: Sequence[Path], points: Sequence[Mapping[str, Any]], dims: Mapping[str, str] | None = None):
    """Merge per-point result datasets along the swept coordinates.

    Parameters
    ----------
    paths : sequence of path
        netCDF results, one per point.
    points : sequence of dict
        The swept parameters of each result.
    dims : dict, optional
        Coordinate name for a swept parameter (default: the parameter's own
        name). If a result already has that dimension (e.g. a notebook that
        writes ``test_lambda`` of length 1), it is used as it is; otherwise
        the parameter's value becomes a new length-1 dimension. Values that
        are not numbers or strings (lists, dicts) become their JSON text.

    Returns
    -------
    xarray.Dataset
        All results combined (:func:`xarray.combine_by_coords`; points that
        do not cover a full grid leave NaN where nothing was computed).
    """
    import xarray as xr

    dims = dict(dims or {})
    parts = []
    for path, point in zip(paths, points):
        ds = xr.load_dataset(path)
        for name, value in point.items():
            coord = dims.get(name, name)
            if coord in ds.dims:
                continue
            if not isinstance(value, (int, float, str)) or isinstance(value, bool):
                value = json.dumps(value)
            if coord in ds.coords:
                ds = ds.drop_vars(coord)
            ds = ds.expand_dims({coord: [value]})
        parts.append(ds)
    if not parts:
        raise ValueError("no results to merge")
    try:
        return xr.combine_by_coords(parts, combine_attrs="drop_conflicts", join="outer")
    except ValueError as err:
        raise ValueError(f"cannot merge the results along {sorted(set(dims.get(n, n) for p in points for n in p))}: "
                         f"{err}") from None


def run_grid(
    notebook,
    grid: Mapping[str, Sequence[Any]],
    *,
    parameters: Mapping[str, Any] | None = None,
    result_parameter: str = "results",
    out_dir=None,
    executed_dir=None,
    merged=None,
    dims: Mapping[str, str] | None = None,
    workers: int | None = None,
    cwd=None,
    progress: bool = True,
) -> list[RunResult]:
    """Run ``notebook`` once per point of ``grid`` (see the module docstring).

    Parameters
    ----------
    notebook : path
        Jupytext percent script or ``.ipynb`` with a cell tagged ``parameters``.
    grid : dict
        ``{parameter: [values]}``; every combination is one run.
    parameters : dict, optional
        Fixed parameters of every run; strings may hold ``{name}`` templates.
    result_parameter : str
        The notebook parameter that names its netCDF result. If
        ``parameters`` does not set it, it is ``<out_dir>/<point>.nc``.
    out_dir : path, optional
        Folder of the per-point results; default ``data/results/batch/<notebook>``.
    executed_dir : path, optional
        Folder of the executed notebooks; default ``notebooks/executed/<notebook>``.
    merged : path, optional
        Write the merged results of all finished points here (atomically).
    dims : dict, optional
        Coordinate names of the swept parameters (:func:`merge_results`).
    workers : int, optional
        Runs at a time; default the number of CPU cores. Each run gets
        ``OMP_NUM_THREADS = cores // workers`` unless that is set already.
    cwd : path, optional
        Working directory of the runs (default the repository root).
    progress : bool
        Print one line per finished run.

    Returns
    -------
    list of RunResult
        One per point, in grid order. Failures do not raise: check ``status``.
    """
    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} does not exist")
    cwd = Path(cwd) if cwd is not None else REPO
    stem = notebook.stem
    out_dir = Path(out_dir) if out_dir is not None else Path("data/results/batch") / stem
    executed_dir = Path(executed_dir) if executed_dir is not None else REPO / "notebooks" / "executed" / stem
    parameters = dict(parameters or {})
    overlap = set(parameters) & set(grid)
    if overlap:
        raise ValueError(f"parameters {sorted(overlap)} are both fixed and swept")
    cores = os.cpu_count() or 1
    workers = max(1, min(int(workers or cores), cores * 4))

    runs = []
    for point in expand_grid(grid):
        key = point_key(point)
        params = {name: _fill(value, point) for name, value in parameters.items()}
        params.update(point)
        params.setdefault(result_parameter, str(out_dir / f"{key}.nc"))
        result = Path(params[result_parameter])
        result = result if result.is_absolute() else cwd / result
        run = RunResult(point, params, "pending", result, executed_dir / f"{key}.ipynb")
        if result.exists():
            run.status = "skipped"
        runs.append(run)
    keys = [run.result for run in runs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"grid points share a result file; put a {{name}} template in {result_parameter!r}")

    pending = [run for run in runs if run.status == "pending"]
    threads = max(1, cores // max(1, min(workers, len(pending) or 1)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_run_one, notebook, run, cwd=cwd, threads=threads) for run in pending]
        for future in futures:
            run = future.result()
            if progress:
                print(f"[{run.status}] {point_key(run.point)} ({run.seconds:.0f} s) -> "
                      f"{run.result if run.status == 'done' else run.message.splitlines()[0]}", flush=True)
    if progress:
        for run in runs:
            if run.status == "skipped":
                print(f"[skipped] {point_key(run.point)}: {run.result} exists", flush=True)

    finished = [run for run in runs if run.status in ("done", "skipped")]
    if merged is not None and finished:
        from segdepth.data.store import write_netcdf_atomic

        ds = merge_results([run.result for run in finished], [run.point for run in finished], dims)
        ds.attrs["batch"] = json.dumps(
            {
                "notebook": str(notebook),
                "grid": {k: list(v) for k, v in grid.items()},
                "parameters": parameters,
                "failed": [run.point for run in runs if run.status == "failed"],
            },
            default=str,
        )
        write_netcdf_atomic(ds, merged)
        if progress:
            print(f"merged {len(finished)} results -> {merged}", flush=True)
    return runs


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m segdepth.apps.batch",
        description="Run a notebook over a grid of parameters with papermill and merge the netCDF results.",
    )
    ap.add_argument("notebook")
    ap.add_argument("--grid", nargs="+", action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a swept parameter and its values (JSON; strings may be bare); repeat for a product grid")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a fixed parameter (JSON; strings may be bare and hold {name} templates)")
    ap.add_argument("--result-param", default="results", help="notebook parameter naming its netCDF result")
    ap.add_argument("--out-dir", help="folder of the per-point results (default data/results/batch/<notebook>)")
    ap.add_argument("--executed-dir", help="folder of the executed notebooks (default notebooks/executed/<notebook>)")
    ap.add_argument("--merged", help="write the merged results here")
    ap.add_argument("--dim", action="append", default=[], metavar="PARAM=COORD",
                    help="coordinate name of a swept parameter in the merged dataset")
    ap.add_argument("--workers", type=int, help="runs at a time (default: CPU cores)")
    args = ap.parse_args(argv)
    grid = {}
    for entry in args.grid:
        if len(entry) < 2:
            ap.error(f"--grid {entry[0]} needs at least one value")
        grid[entry[0]] = [_json_or_text(v) for v in entry[1:]]
    dims = {}
    for entry in args.dim:
        name, sep, coord = entry.partition("=")
        if not sep or not name or not coord:
            ap.error(f"--dim must be PARAM=COORD, got {entry!r}")
        dims[name] = coord
    try:
        runs = run_grid(
            args.notebook,
            grid,
            parameters={name: _json_or_text(value) for name, value in args.parameter},
            result_parameter=args.result_param,
            out_dir=args.out_dir,
            executed_dir=args.executed_dir,
            merged=args.merged,
            dims=dims,
            workers=args.workers,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"segdepth.apps.batch: error: {err}", file=sys.stderr)
        return 2
    failed = [run for run in runs if run.status == "failed"]
    counts = {s: sum(run.status == s for run in runs) for s in ("done", "skipped", "failed")}
    print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    for run in failed:
        print(f"FAILED {args.notebook} with {json.dumps(run.point)}:\n{run.message}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
