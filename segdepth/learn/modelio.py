"""Saving and loading trained networks: safetensors weights plus a JSON model card.

A saved model is two files side by side::

    models/unet_b16.safetensors   tensors of model.state_dict() (no pickle)
    models/unet_b16.json          the model card

The card holds ``architecture`` (``UNet.config``, enough to rebuild the
network) and whatever the caller adds: training dose ``lambda``, pixel size,
metrics, data set hashes, git commit. Both files are written atomically (temp
file in the same directory, then :func:`os.replace`), weights first, so a
reader never sees a half-written file. Loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from segdepth.data.store import atomic_write
from segdepth.learn.model import UNet, build_model

__all__ = ["save_model", "load_model", "card_path", "update_card", "interpolate_models"]

WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"


def card_path(path: str | os.PathLike) -> Path:
    """Path of the JSON model card that belongs to the weights file ``path``."""
    return Path(path).with_suffix(CARD_SUFFIX)


def _check_weights_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix != WEIGHTS_SUFFIX:
        raise ValueError(f"weights path must end in {WEIGHTS_SUFFIX!r}, got {str(path)!r}")
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"model card value of type {type(obj).__name__} is not JSON-serialisable")


def save_model(
    model: UNet, path: str | os.PathLike, card: dict[str, Any] | None = None, *, weights_dtype: str | None = None
) -> Path:
    """Write ``model`` as ``path`` (safetensors) and its card as ``path`` with suffix ``.json``.

    Parameters
    ----------
    model : UNet
        Network to save; its ``config`` becomes ``card["architecture"]``.
    path : str or os.PathLike
        Weights file, ending in ``.safetensors``. The directory must exist.
    card : dict, optional
        JSON-serialisable metadata (numpy scalars and arrays are converted),
        e.g. ``{"lambda": 100.0, "sampling": 0.053, "metrics": {...}}``
        [units as the caller documents them]. An ``architecture`` entry, if
        present, must equal ``model.config``.
    weights_dtype : {"float16", "bfloat16"}, optional
        Store floating-point tensors in this precision (halves the file; they
        are converted back to the model's float32 on loading).

    Returns
    -------
    pathlib.Path
        Path of the card that was written.
    """
    path = _check_weights_path(path)
    if not isinstance(getattr(model, "config", None), dict):
        raise ValueError("model must have a config dict (a segdepth.learn.model network)")
    card = {} if card is None else dict(card)
    if "architecture" in card and card["architecture"] != model.config:
        raise ValueError("card['architecture'] differs from model.config; leave it out and save_model fills it in")
    card["architecture"] = model.config
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    if weights_dtype is not None:
        if weights_dtype not in ("float16", "bfloat16"):
            raise ValueError(f"weights_dtype must be 'float16' or 'bfloat16', got {weights_dtype!r}")
        dtype = getattr(torch, weights_dtype)
        tensors = {k: (t.to(dtype) if t.is_floating_point() else t) for k, t in tensors.items()}
        card["weights_dtype"] = weights_dtype
    text = json.dumps(card, indent=2, sort_keys=True, default=_json_default) + "\n"
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}), make_parents=False)
    cpath = card_path(path)
    atomic_write(cpath, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), make_parents=False)
    return cpath


def _read_card(cpath: Path) -> dict[str, Any]:
    if not cpath.is_file():
        raise FileNotFoundError(f"model card not found: {cpath} (save_model writes it beside the weights)")
    try:
        card = json.loads(cpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"model card {cpath} is not valid JSON: {err}") from None
    if not isinstance(card, dict) or not isinstance(card.get("architecture"), dict):
        raise ValueError(f"model card {cpath} must be a JSON object with an 'architecture' object")
    return card


_ABSENT = object()


def _show(value: Any) -> str:
    return "<absent>" if value is _ABSENT else repr(value)


def _architecture_diff(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """``"key (card ..., expected ...)"`` for every key whose value differs."""
    diffs = []
    for key in sorted(set(found) | set(expected)):
        a, b = found.get(key, _ABSENT), expected.get(key, _ABSENT)
        if a != b:
            diffs.append(f"{key} (card {_show(a)}, expected {_show(b)})")
    return diffs


def _check_tensors(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: Path) -> None:
    for name, ref in expected.items():
        if name not in loaded:
            raise ValueError(f"weights {source} do not match the card's architecture: tensor {name!r} is missing")
        if tuple(loaded[name].shape) != tuple(ref.shape):
            raise ValueError(
                f"weights {source} do not match the card's architecture: tensor {name!r} has shape "
                f"{tuple(loaded[name].shape)}, expected {tuple(ref.shape)}"
            )
    extra = [name for name in loaded if name not in expected]
    if extra:
        raise ValueError(f"weights {source} do not match the card's architecture: unexpected tensor {extra[0]!r}")


def load_model(
    path: str | os.PathLike,
    *,
    architecture: dict[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[UNet, dict[str, Any]]:
    """Rebuild a network saved by :func:`save_model`, in eval mode.

    Parameters
    ----------
    path : str or os.PathLike
        Weights file (``.safetensors``); the card is read from the same stem
        with suffix ``.json``.
    architecture : dict, optional
        Expected ``UNet.config``. If given, a card describing a different
        network raises ``ValueError`` naming the differing keys.
    map_location : str or torch.device
        Device for the returned model.

    Returns
    -------
    model : UNet
        The network with the saved weights, in eval mode.
    card : dict
        The model card.
    """
    path = _check_weights_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model weights not found: {path}")
    cpath = card_path(path)
    card = _read_card(cpath)
    if architecture is not None:
        expected = json.loads(json.dumps(dict(architecture), default=_json_default))  # tuples -> lists
        diffs = _architecture_diff(card["architecture"], expected)
        if diffs:
            raise ValueError(f"model card {cpath} describes a different architecture: " + "; ".join(diffs))

    model = build_model(card["architecture"])
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"could not read weights {path} as safetensors: {err}") from None
    _check_tensors(tensors, model.state_dict(), path)
    model.load_state_dict(tensors, strict=True)
    model.to(map_location)
    model.eval()
    return model, card


def update_card(path: str | os.PathLike, fields: dict[str, Any]) -> Path:
    """Add or replace top-level ``fields`` of the model card of the weights file ``path`` (atomically).

    For results measured after training (for example the shift-test figures of
    a model card). ``architecture`` cannot be changed this way.
    """
    if "architecture" in fields:
        raise ValueError("update_card cannot change 'architecture' (it must match the weights)")
    cpath = card_path(path)
    card = _read_card(cpath)
    card.update(fields)
    text = json.dumps(card, indent=2, sort_keys=True, default=_json_default) + "\n"
    atomic_write(cpath, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), make_parents=False)
    return cpath


def interpolate_models(base: UNet, tuned: UNet, alpha: float) -> UNet:
    """Weight-space interpolation ``(1 - alpha) * base + alpha * tuned`` of two networks of one architecture.

    Robust fine-tuning by weight averaging ("WiSE-FT": Wortsman et al., *Robust fine-tuning of zero-shot
    models*, CVPR 2022): when ``tuned`` was fine-tuned from ``base`` on a shifted distribution, the
    interpolated network often holds on both distributions better than either end. Every floating-point
    tensor is interpolated, BatchNorm running statistics included; integer tensors (BatchNorm's
    ``num_batches_tracked``) are taken from ``base``. Returns a new network in eval mode; the inputs are
    not changed.

    Raises ``ValueError`` when the architectures differ or ``alpha`` is outside [0, 1].
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    for name, net in (("base", base), ("tuned", tuned)):
        if not isinstance(getattr(net, "config", None), dict):
            raise ValueError(f"{name} must be a segdepth.learn.model network (with a config dict)")
    diffs = _architecture_diff(tuned.config, base.config)
    if diffs:
        raise ValueError("cannot interpolate networks of different architectures: " + "; ".join(diffs))
    a, b = base.state_dict(), tuned.state_dict()
    mixed = {k: torch.lerp(v, b[k].to(v.dtype), alpha) if v.is_floating_point() else v.clone() for k, v in a.items()}
    out = build_model(base.config)
    out.load_state_dict(mixed, strict=True)
    return out.eval()
