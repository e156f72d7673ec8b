"""Dataset store: netCDF shards written atomically, opened together as one dataset.

A dataset is a directory holding ``parameters.json`` (the full generation
parameters) and shards ``shard_00000.nc``, ``shard_00001.nc``, ... Each shard is
written to a temporary file in the same directory and renamed into place, so
a killed job never leaves a readable half-written shard; a re-run skips shards
that exist. A directory made with other parameters is refused rather than
mixed.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from segdepth import __version__

__all__ = [
    "git_commit",
    "atomic_write",
    "write_netcdf_atomic",
    "write_json_atomic",
    "prepare_directory",
    "shard_path",
    "finished_shards",
    "open_dataset",
    "provenance_attrs",
    "merge_datasets",
]

SHARD_GLOB = "shard_*.nc"


def git_commit() -> str:
    """The repository's current commit hash, or ``"unknown"`` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance_attrs(parameters: dict, seed: int) -> dict:
    """Dataset attributes: parameters as JSON, package version, git commit and seed."""
    return {
        "parameters": json.dumps(parameters, sort_keys=True),
        "segdepth_version": __version__,
        "git_commit": git_commit(),
        "seed": int(seed),
    }


def atomic_write(path, write, *, suffix: str = ".tmp", make_parents: bool = True) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then move it over ``path``.

    The one atomic-write mechanism of the package: ``path`` is either its old
    complete version or the new complete one, never a half-written file. The
    temporary file (named ``.<name>.*<suffix>``; some writers infer the format
    from the suffix) is flushed to disk before the rename and removed when
    ``write`` fails.

    Parameters
    ----------
    path : path
        Destination.
    write : callable
        ``write(tmp)`` writes the content to the path string ``tmp``.
    suffix : str
        Suffix of the temporary file.
    make_parents : bool
        Create missing parent directories (else a missing one raises ``FileNotFoundError``).

    Raises
    ------
    FileNotFoundError
        When the directory is missing and ``make_parents`` is false.
    ValueError
        When ``path`` is a directory.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: output directory does not exist")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, expected an output file name")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_netcdf_atomic(ds: xr.Dataset, path, *, compress: bool = True, make_parents: bool = True) -> Path:
    """Write ``ds`` to ``path`` (netCDF4) via a temporary file and a rename (:func:`atomic_write`)."""
    encoding = {}
    if compress:
        for name, var in ds.data_vars.items():
            if var.dtype.kind in "fiub":
                encoding[name] = {"zlib": True, "complevel": 1}
    return atomic_write(Path(path), lambda tmp: ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding),
                        make_parents=make_parents)


def write_json_atomic(obj, path) -> Path:
    """Write ``obj`` as indented JSON via a temporary file and a rename."""

    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")

    return atomic_write(Path(path), write)


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff_keys(va, vb, prefix + k + ".")
        elif va != vb:
            keys.append(prefix + k)
    return keys


def prepare_directory(directory, parameters: dict) -> Path:
    """Create ``directory`` for a dataset made with ``parameters``, or check it matches.

    Raises
    ------
    ValueError
        If the directory already holds a dataset made with other parameters.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"output path {directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    pfile = directory / "parameters.json"
    canonical = json.loads(json.dumps(parameters, sort_keys=True))
    if pfile.exists():
        existing = json.loads(pfile.read_text())
        if existing != canonical:
            diff = ", ".join(_diff_keys(existing, canonical)) or "?"
            raise ValueError(
                f"output path {directory} holds a dataset made with different parameters "
                f"(differing: {diff}); choose another output path or delete it"
            )
    else:
        if any(directory.glob(SHARD_GLOB)):
            raise ValueError(f"output path {directory} holds shards but no parameters.json; refusing to mix")
        write_json_atomic(canonical, pfile)
    return directory


def shard_path(directory, index: int) -> Path:
    return Path(directory) / f"shard_{index:05d}.nc"


def finished_shards(directory) -> list[int]:
    """Indices of the complete shards in ``directory`` (temporary files are ignored)."""
    out = []
    for p in sorted(Path(directory).glob(SHARD_GLOB)):
        try:
            out.append(int(p.stem.split("_")[1]))
        except (IndexError, ValueError):
            continue
    return out


# How the README's datasets are made, by the last two parts of their directory (``open_dataset``'s
# missing-data message); any other directory: notebook 01 with ``-p output DIR``.
_MAKE_DATASET = {
    "data/test": "make test-split",
    "simulated/cpu_train": "python -m segdepth.apps.notebook notebooks/01_data_generation.py "
                           "-p output data/simulated/cpu_train -p n_structures 100 -p n_defocus 4 -p seed 0",
    "simulated/nb01_cpu": "make data",
    "simulated/robust_train": "make data-robust",
    "simulated/robust_test": "make robust-test",
    "simulated/shift_test": "make shift-test",
    "simulated/robust_phonons_train": "make data-robust-phonons",
}
_MAKE_DATASET_PARENT = {"simulated/ablation": "make ablation"}  # notebook 07: one dataset per factor


def _make_dataset_command(directory) -> str:
    """The command that makes the dataset ``directory`` (README names; else notebook 01 with it as output)."""
    parts = Path(directory).parts
    if "/".join(parts[-2:]) in _MAKE_DATASET:
        return _MAKE_DATASET["/".join(parts[-2:])]
    if "/".join(parts[-3:-1]) in _MAKE_DATASET_PARENT:
        return _MAKE_DATASET_PARENT["/".join(parts[-3:-1])]
    return f"python -m segdepth.apps.notebook notebooks/01_data_generation.py -p output {Path(directory).as_posix()}"


def open_dataset(directory, *, load: bool = False) -> xr.Dataset:
    """Open every shard of a dataset directory as one dataset along ``sample``.

    Parameters
    ----------
    directory : path
        Dataset directory (or a single ``.nc`` file).
    load : bool
        Load everything into memory (otherwise lazily, with dask).
    """
    directory = Path(directory)
    if directory.is_file():
        return xr.load_dataset(directory) if load else xr.open_dataset(directory)
    paths = sorted(directory.glob(SHARD_GLOB))
    if not paths:
        raise FileNotFoundError(
            f"no dataset shards ({SHARD_GLOB}) in {directory}; make it with: {_make_dataset_command(directory)}"
        )
    if load:
        parts = [xr.load_dataset(p) for p in paths]
        ds = xr.concat(parts, dim="sample", data_vars="minimal", coords="minimal", compat="override")
    else:
        ds = xr.open_mfdataset(
            paths, combine="nested", concat_dim="sample", data_vars="minimal", coords="minimal", compat="override"
        )
    ds.attrs = dict(ds.attrs)
    ds.attrs["n_shards"] = len(paths)
    return ds


def _fill_value(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind in "iub":
        return 0
    if dtype.kind == "f":
        return np.nan
    return ""


def merge_datasets(sources, output) -> Path:
    """Write the shards of several dataset directories as one dataset directory ``output``.

    For training on datasets made with different parameters (for example static atoms and frozen
    phonons): shards are copied in order, ``structure`` numbers are offset so that every source keeps
    its structures distinct (a split by structure stays a split by structure), and a per-sample
    coordinate that only some sources have is filled where absent (integers 0, floats NaN, strings
    empty: ``phonons`` 0 means static atoms). Every shard keeps its own generation parameters as
    ``source_parameters`` and its source as ``source``; ``parameters`` (what training records) is the
    first source's, with ``merged_from`` listing every source's parameters. ``parameters.json`` of
    ``output`` records the sources. Shards already in ``output`` are skipped (a killed merge resumes);
    an ``output`` merged from other sources is refused.
    """
    sources = [Path(s) for s in sources]
    if len(sources) < 2:
        raise ValueError(f"merge_datasets needs at least two source directories, got {len(sources)}")
    shards, params = [], []
    for src in sources:
        paths = sorted(src.glob(SHARD_GLOB)) if src.is_dir() else []
        if not paths:
            raise FileNotFoundError(f"no dataset shards ({SHARD_GLOB}) in {src}")
        pfile = src / "parameters.json"
        params.append(json.loads(pfile.read_text()) if pfile.exists() else
                      json.loads(xr.open_dataset(paths[0]).attrs.get("parameters", "{}")))
        shards.append(paths)
    coords: dict[str, object] = {}
    offsets, offset = [], 0
    for paths in shards:
        offsets.append(offset)
        with xr.open_mfdataset(paths, combine="nested", concat_dim="sample", data_vars="minimal",
                               coords="minimal", compat="override") as ds:
            for name, var in ds.coords.items():
                if var.dims == ("sample",):
                    coords.setdefault(name, var.dtype)
            offset += int(ds["structure"].max()) + 1
    merged = dict(params[0], merged_from=[{"source": str(s), "parameters": p} for s, p in zip(sources, params)])
    prepare_directory(output, {"merged_from": [{"source": str(s), "n_shards": len(p)}
                                               for s, p in zip(sources, shards)]})
    index = 0
    for src, paths, off, par in zip(sources, shards, offsets, params):
        for path in paths:
            target = shard_path(output, index)
            index += 1
            if target.exists():
                continue
            ds = xr.load_dataset(path)
            ds = ds.assign_coords(structure=ds["structure"] + off)
            for name, dtype in coords.items():
                if name not in ds.coords:
                    ds = ds.assign_coords({name: ("sample", np.full(ds.sizes["sample"], _fill_value(dtype), dtype))})
            ds.attrs.update(parameters=json.dumps(merged, sort_keys=True), source=str(src),
                            source_parameters=json.dumps(par, sort_keys=True), shard=index - 1)
            write_netcdf_atomic(ds, target)
    return Path(output)
