"""Data-parallel training over several processes, GPUs or machines (``torchrun`` + DDP).

:func:`segdepth.learn.training.train` runs data-parallel when it is called inside an
initialised :mod:`torch.distributed` process group. This module is the entry
point that ``torchrun`` starts once per process::

    # one machine, 2 processes (CPU: gloo; GPUs: NCCL, one GPU per process)
    torchrun --standalone --nproc-per-node 2 -m segdepth.learn.distributed \\
        --data data/simulated/cpu_train --out data/checkpoints/ddp --config config.json

    # several machines: the same command on each, with a rendezvous
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m segdepth.learn.distributed --data ... --out ... --config ...

``--config`` is a :class:`segdepth.learn.training.TrainConfig` as JSON (a file or
the text). Every process reads the dataset, splits it by structure with the
same seed, and trains; rank 0 writes the checkpoints, the best model and the
history to ``--out`` (resumable, as for one process). :func:`launch` runs the
one-machine command from Python (notebook 02 does, with ``nproc > 1``).

The training loop talks to the other processes only through the few
collective operations of :class:`TorchDistributed`; :class:`SingleProcess`
is its stand-in for one process (every operation trivial), and
:func:`current_processes` picks the one that applies.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["SingleProcess", "TorchDistributed", "current_processes", "launch", "main"]


class SingleProcess:
    """The collective operations of training for a single process: all trivial.

    Attributes
    ----------
    rank, world : int
        This process's rank (0) and the number of processes (1).
    """

    rank = 0
    world = 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes files and shows progress."""
        return self.rank == 0

    def wrap_model(self, model, device):
        """The module to train (gradients averaged over the processes): ``model`` itself."""
        return model

    def broadcast(self, tensor) -> None:
        """Overwrite ``tensor`` in place with rank 0's (here: it already is)."""

    def all_reduce(self, tensor) -> None:
        """Replace ``tensor`` in place by its sum over the processes (here: itself)."""

    def all_gather_object(self, obj) -> list:
        """Every rank's ``obj`` (a picklable object), in rank order."""
        return [obj]

    def barrier(self) -> None:
        """Wait until every process has arrived here."""


class TorchDistributed(SingleProcess):
    """The collective operations of training over the initialised default :mod:`torch.distributed` group.

    The network is wrapped in ``DistributedDataParallel``; tensors must live
    on the device of the group's backend (CPU for gloo, this process's GPU
    for NCCL).
    """

    def __init__(self) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("no torch.distributed process group is initialised")
        self._dist = dist
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()

    def wrap_model(self, model, device):
        """``model`` in ``DistributedDataParallel`` (``device`` its GPU, if it is on one)."""
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    def broadcast(self, tensor) -> None:
        """Overwrite ``tensor`` in place with rank 0's."""
        self._dist.broadcast(tensor, src=0)

    def all_reduce(self, tensor) -> None:
        """Replace ``tensor`` in place by its sum over the processes."""
        self._dist.all_reduce(tensor)

    def all_gather_object(self, obj) -> list:
        """Every rank's ``obj`` (a picklable object), in rank order."""
        gathered = [None] * self.world
        self._dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        """Wait until every process has arrived here."""
        self._dist.barrier()


def current_processes() -> SingleProcess:
    """:class:`TorchDistributed` inside an initialised group of several processes, else :class:`SingleProcess`."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchDistributed()
    return SingleProcess()


def _backend(name: str) -> str:
    import torch

    if name == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if name not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl', got {name!r}")
    return name


def main(argv=None) -> int:
    """Worker entry point (one per process, started by ``torchrun``)."""
    ap = argparse.ArgumentParser(prog="torchrun ... -m segdepth.learn.distributed",
                                 description="Data-parallel SegDepth training (run under torchrun)")
    ap.add_argument("--data", required=True, help="dataset directory or .nc file (notebook 01)")
    ap.add_argument("--out", required=True, help="checkpoint directory (resumable)")
    ap.add_argument("--config", required=True, help="TrainConfig as JSON text or a JSON file")
    ap.add_argument("--split", nargs=3, type=float, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VAL", "TEST"))
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--backend", default="auto", help="auto (NCCL with GPUs, else gloo), gloo or nccl")
    args = ap.parse_args(argv)

    import torch
    import torch.distributed as dist

    from segdepth.data.store import open_dataset
    from segdepth.learn.torchdata import split_indices
    from segdepth.learn.training import TrainConfig, train

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        ap.error("run me under torchrun (RANK / WORLD_SIZE are not set); or call segdepth.learn.distributed.launch")
    text = args.config if args.config.lstrip().startswith("{") else Path(args.config).read_text()
    cfg = TrainConfig.from_dict(json.loads(text))
    backend = _backend(args.backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    try:
        ds = open_dataset(args.data, load=True)
        train_idx, val_idx, _ = split_indices(ds, args.split, seed=args.split_seed)
        train(cfg, ds.isel(sample=train_idx), ds.isel(sample=val_idx), args.out, device=device,
              progress=dist.get_rank() == 0)
    finally:
        dist.destroy_process_group()
    return 0


def launch(data, cfg, out_dir, *, nproc: int = 2, split=(0.8, 0.1, 0.1), split_seed: int = 0,
           backend: str = "auto", env: dict | None = None, log=None):
    """Train data-parallel on this machine with ``nproc`` processes (``torchrun --standalone``).

    Parameters
    ----------
    data : path
        Dataset directory or ``.nc`` file.
    cfg : segdepth.learn.training.TrainConfig
        Settings; ``num_threads`` is per process.
    out_dir : path
        Checkpoint directory (as :func:`segdepth.learn.training.train`; resumes).
    nproc : int
        Processes (one per GPU with NCCL).
    split, split_seed
        Split by structure, as in notebook 02.
    backend : {"auto", "gloo", "nccl"}
    env : dict, optional
        Extra environment variables of the processes.
    log : path, optional
        Where the processes' output goes (default ``out_dir/torchrun.log``).

    Returns
    -------
    xarray.Dataset
        The training history written by rank 0.
    """
    import xarray as xr

    from segdepth.learn.training import HISTORY_NAME

    if int(nproc) < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = Path(log) if log is not None else out_dir / "torchrun.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(nproc)}",
           "-m", "segdepth.learn.distributed", "--data", str(data), "--out", str(out_dir),
           "--config", json.dumps(cfg.to_dict()), "--split", *map(str, split), "--split-seed", str(split_seed),
           "--backend", backend]
    full_env = {**os.environ, "OMP_NUM_THREADS": str(cfg.num_threads), **(env or {})}
    repo = str(Path(__file__).resolve().parents[2])
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, full_env.get("PYTHONPATH")]))
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=full_env)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"torchrun with {nproc} processes failed (exit {proc.returncode}); log {log}:\n{tail}")
    return xr.load_dataset(out_dir / HISTORY_NAME)


if __name__ == "__main__":
    raise SystemExit(main())
