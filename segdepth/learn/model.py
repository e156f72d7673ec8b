"""The depth-segmentation network: a UNet with a 4x coarser output grid (paper) or a binned input.

Layout (paper, appendix), for ``n_scales = 6``::

    image (B, 1, H, W)
      -> encoder: double conv, then 6 x [2x2 max pool -> double conv]
      -> decoder: 6 x [upsample x2 -> concatenate skip -> double conv]
      -> head:    2 x [2x2 max pool -> double conv (widening)]
                  -> 4x4 median filter (stride 1) -> 1x1 conv
    logits (B, n_classes, H/4, W/4)

Every "double conv" is two 3x3 convolutions with replication padding, each
followed by batch normalisation and a ReLU. The network returns logits; the
per-pixel depth distribution ``F(y)`` of the paper is ``softmax(logits, dim=1)``
(:func:`predict_proba`).

Channel widths
--------------
``channels[k]`` is the width at encoder scale ``k`` (``k = 0`` is full
resolution, ``k = n_scales`` the bottleneck); the decoder mirrors them. The
default rule doubles the width at every scale from ``base_channels`` up to
``max_channels`` (default ``16 * base_channels``). The two head blocks double
the width of the decoder output by default: ``(2 * channels[0], 4 * channels[0])``.

The parameter counts of Table I of the paper (:data:`PAPER_TABLE_I`) are not
monotonic in the base width (base 64 has fewer parameters than base 32), so the
paper cannot have used one growth rule for all sizes. The counts scale as
``base**2`` within two groups, {16, 32} and {64, 96, 130}, which
:func:`paper_config` reproduces with one rule per group:

- base 16 and 32: width doubles up to ``16 * base`` (16, 32, ..., 256, 256, 256
  for base 16). Ours is 2.5 % above the paper.
- base 64, 96 and 130: width doubles up to ``4 * base`` (64, 128, 256, 256, 256,
  256, 256 for base 64). Ours is 4.1 % below the paper.

In both groups the head widens to the widest encoder width ``M`` and then to
``2 M`` (256 and 512 for base 16 and 64), and the decoder upsamples bilinearly.
That head holds a third of the parameters and most of the compute: at base 16
a 256 x 256 image costs 29 GMAC with it and 4.6 GMAC with the default head.
These rules are our reconstruction, not taken from the paper's code;
:func:`parameter_table` lists the comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from segdepth.constants import N_CLASSES, check_int

__all__ = [
    "PAPER_TABLE_I",
    "UNet",
    "DoubleConv",
    "LocalMeanDivide",
    "MedianFilter2d",
    "DenoisingUNet",
    "DenoiseSegment",
    "build_model",
    "count_parameters",
    "optimise_for_inference",
    "paper_config",
    "parameter_table",
    "predict_proba",
]

#: Number of trainable parameters per base width, Table I of the paper.
PAPER_TABLE_I: dict[int, float] = {16: 11.75e6, 32: 46.92e6, 64: 18.75e6, 96: 42.17e6, 130: 77.31e6}

_GROWTH_RULES = ("double", "hold")
_UPSAMPLE_MODES = ("bilinear", "transpose")


class DoubleConv(nn.Sequential):
    """Two (3x3 conv -> batch norm -> ReLU) with replication padding.

    Parameters
    ----------
    in_channels, out_channels : int
        Input and output widths.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, padding_mode="replicate", bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, padding_mode="replicate", bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2x2 max pooling followed by a :class:`DoubleConv`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """Upsample by 2, concatenate the skip connection, then a :class:`DoubleConv`.

    Parameters
    ----------
    in_channels : int
        Width of the coarser input.
    skip_channels : int
        Width of the skip connection (and of the output).
    mode : {"bilinear", "transpose"}
        ``"bilinear"``: parameter-free bilinear interpolation.
        ``"transpose"``: 2x2 transposed convolution to ``skip_channels``.
    """

    def __init__(self, in_channels: int, skip_channels: int, *, mode: str = "bilinear") -> None:
        super().__init__()
        if mode == "bilinear":
            self.upsample: nn.Module = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            merged = in_channels + skip_channels
        else:
            self.upsample = nn.ConvTranspose2d(in_channels, skip_channels, kernel_size=2, stride=2)
            merged = 2 * skip_channels
        self.conv = DoubleConv(merged, skip_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.upsample(x)], dim=1))


def _oddeven_merge(lo: int, hi: int, r: int):
    """Comparators of Batcher's odd-even merge of wires ``lo..hi`` (inclusive) with stride ``r``."""
    step = 2 * r
    if step < hi - lo:
        yield from _oddeven_merge(lo, hi, step)
        yield from _oddeven_merge(lo + r, hi, step)
        yield from ((i, i + r) for i in range(lo + r, hi - r, step))
    else:
        yield (lo, lo + r)


def _oddeven_sort(lo: int, hi: int):
    """Comparators of Batcher's odd-even merge sort of wires ``lo..hi`` (inclusive; a power of two long)."""
    if hi > lo:
        mid = lo + (hi - lo) // 2
        yield from _oddeven_sort(lo, mid)
        yield from _oddeven_sort(mid + 1, hi)
        yield from _oddeven_merge(lo, hi, 1)


def _median_network(k: int) -> tuple[list[tuple[int, int]], list[tuple[int, int, bool, bool]]]:
    """Sorting network for the median of a ``k x k`` window (``k`` a power of two).

    Wire ``j * k + r`` holds the ``r``-th smallest of the window's column ``j``:
    the columns are sorted once per image column (``column``, shared by the
    ``k`` windows that contain it) and then merged by Batcher's network, pruned
    to the comparators that feed the two middle outputs. Returns the column
    sort and the merge as ``(a, b, keep_min, keep_max)``.
    """
    n = k * k
    column = list(_oddeven_sort(0, k - 1))
    merge = []
    width = k
    while width < n:  # merge sorted runs of `width` pairwise, as the recursive sort does
        for lo in range(0, n, 2 * width):
            merge.extend(_oddeven_merge(lo, lo + 2 * width - 1, 1))
        width *= 2
    needed = {n // 2 - 1, n // 2}
    pruned = []
    for a, b in reversed(merge):
        keep_min, keep_max = a in needed, b in needed
        if keep_min or keep_max:
            pruned.append((a, b, keep_min, keep_max))
            needed |= {a, b}
    return column, pruned[::-1]


class MedianFilter2d(nn.Module):
    """Median over a ``size x size`` window, stride 1, output the size of the input.

    The input is replicate-padded by ``(size - 1) // 2`` before and ``size // 2``
    after each spatial axis (``(1, 2)`` for ``size = 4``), so output pixel
    ``(i, j)`` is the median of input rows ``i - 1 .. i + 2`` and columns
    ``j - 1 .. j + 2`` (clamped at the border). For an even number of values
    the median is the mean of the two middle ones, as in :func:`numpy.median`.
    It is differentiable: the gradient flows to the one or two middle values.

    For a power-of-two ``size`` (the paper's 4) the median comes from a pruned
    Batcher sorting network of element-wise minima and maxima over shifted
    views, with the column sorts shared between neighbouring windows: no
    window copies and no sort (5-6x faster on a CPU than sorting unfolded
    windows, which remains the path for other sizes and the reference of the
    tests).

    Parameters
    ----------
    size : int
        Window width [pixels]; 1 is the identity.
    """

    def __init__(self, size: int = 4) -> None:
        super().__init__()
        size = check_int(size, "median filter size")
        self.size = size
        self._network = _median_network(size) if size > 1 and size & (size - 1) == 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.size
        if k == 1:
            return x
        before, after = (k - 1) // 2, k // 2
        padded = F.pad(x, (before, after, before, after), mode="replicate")
        if self._network is None:
            return self._sorted_median(padded, x.shape)
        height, width = x.shape[-2:]
        column, merge = self._network
        rows = [padded[..., r : r + height, :] for r in range(k)]  # (..., H, W + k - 1) each
        for a, b in column:
            rows[a], rows[b] = torch.minimum(rows[a], rows[b]), torch.maximum(rows[a], rows[b])
        wires = [rows[r][..., j : j + width] for j in range(k) for r in range(k)]
        for a, b, keep_min, keep_max in merge:
            low = torch.minimum(wires[a], wires[b]) if keep_min else None
            high = torch.maximum(wires[a], wires[b]) if keep_max else None
            wires[a], wires[b] = low, high
        n = k * k
        return 0.5 * (wires[n // 2 - 1] + wires[n // 2])

    def _sorted_median(self, padded: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Reference: sort every unfolded window."""
        k = self.size
        windows = padded.unfold(-2, k, 1).unfold(-2, k, 1)  # (B, C, H, W, k, k)
        values = windows.reshape(*shape, k * k).sort(dim=-1).values
        n = k * k
        if n % 2:
            return values[..., n // 2]
        return 0.5 * (values[..., n // 2 - 1] + values[..., n // 2])

    def extra_repr(self) -> str:
        return f"size={self.size}"


class LocalMeanDivide(nn.Module):
    """Divide an image by its Gaussian-weighted local mean (a fixed layer, no weights).

    ``x / (G_sigma * x)`` per channel, with replicated borders. It removes intensity variations slower than
    the lattice (uneven illumination, the mean intensity lost by thick regions to an aperture or to a
    quasi-coherent envelope on the wave, a vacuum level that is not the crystal's) and keeps the column
    contrast, which the network reads. A ``sigma`` of 1.5 A (7.08 pixels of 0.212 A) passes the {111}
    fringes (3.12 A) at 1 % and the 5.4 A cell at 22 %.

    Parameters
    ----------
    sigma : float
        Standard deviation of the Gaussian [input pixels], > 0; the kernel spans ``+- ceil(3 sigma)``.
    eps : float
        Lower bound of the local mean (an all-dark region stays finite).
    """

    def __init__(self, sigma: float, *, eps: float = 1e-3) -> None:
        super().__init__()
        sigma = float(sigma)
        if not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be a finite number of pixels > 0, got {sigma!r}")
        self.sigma, self.eps = sigma, float(eps)
        self.radius = int(math.ceil(3 * sigma))
        taps = torch.exp(-0.5 * (torch.arange(-self.radius, self.radius + 1, dtype=torch.float32) / sigma) ** 2)
        self.register_buffer("kernel", taps / taps.sum(), persistent=False)

    def local_mean(self, x: torch.Tensor) -> torch.Tensor:
        """``G_sigma * x`` for ``x`` of shape ``(B, C, H, W)`` (borders replicated)."""
        b, c, h, w = x.shape
        r, k = self.radius, self.kernel.to(x.dtype)
        y = x.reshape(b * c, 1, h, w).contiguous()
        y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
        return y.reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.local_mean(x).clamp_min(self.eps)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}"


class Encoder(nn.Module):
    """Initial double conv, then ``len(channels) - 1`` downsampling blocks."""

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.inc = DoubleConv(in_channels, channels[0])
        self.downs = nn.ModuleList(Down(a, b) for a, b in zip(channels[:-1], channels[1:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.inc(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features


class Decoder(nn.Module):
    """Mirror of :class:`Encoder`: upsample, concatenate skip, double conv."""

    def __init__(self, channels: Sequence[int], *, mode: str) -> None:
        super().__init__()
        widths = list(channels)[::-1]  # bottleneck first
        self.ups = nn.ModuleList(Up(a, b, mode=mode) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, skip in zip(self.ups, features[-2::-1]):
            x = up(x, skip)
        return x


class Head(nn.Sequential):
    """Widening downsampling blocks (two in the paper), median filter, 1x1 conv to class logits."""

    def __init__(self, in_channels: int, head_channels: Sequence[int], n_classes: int, *, median_size: int) -> None:
        widths = [in_channels, *head_channels]
        super().__init__(
            *(Down(a, b) for a, b in zip(widths[:-1], widths[1:])),
            MedianFilter2d(median_size),
            nn.Conv2d(widths[-1], n_classes, kernel_size=1),
        )


def _resolve_channels(base_channels: int, n_scales: int, channel_growth: str, max_channels: int | None) -> list[int]:
    if channel_growth == "hold":
        return [base_channels] * (n_scales + 1)
    cap = 16 * base_channels if max_channels is None else max_channels
    return [max(base_channels, min(base_channels * 2**k, cap)) for k in range(n_scales + 1)]


def _widths(base_channels, n_scales, channel_growth, max_channels, channels, upsample):
    """Validated ``(n_scales, max_channels, channels)`` of an encoder (shared by the UNets)."""
    n_scales = check_int(n_scales, "n_scales")
    if channel_growth not in _GROWTH_RULES:
        raise ValueError(f"channel_growth must be one of {_GROWTH_RULES}, got {channel_growth!r}")
    if upsample not in _UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {_UPSAMPLE_MODES}, got {upsample!r}")
    if max_channels is not None:
        max_channels = check_int(max_channels, "max_channels")
    if channels is None:
        base = check_int(16 if base_channels is None else base_channels, "base_channels")
        return n_scales, max_channels, _resolve_channels(base, n_scales, channel_growth, max_channels)
    channels = [check_int(c, "channels[i]") for c in channels]
    if len(channels) != n_scales + 1:
        raise ValueError(
            f"channels must have n_scales + 1 = {n_scales + 1} entries (one per scale), got {len(channels)}"
        )
    if base_channels is not None and base_channels != channels[0]:
        raise ValueError(f"base_channels ({base_channels}) must equal channels[0] ({channels[0]}) or be None")
    return n_scales, max_channels, channels


class UNet(nn.Module):
    """UNet for per-pixel depth classification on an ``output_factor`` times coarser grid.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for HRTEM).
    n_classes : int
        Depth classes (11: depth 0..10, 0 = background).
    base_channels : int, optional
        Width of the full-resolution scale. Defaults to 16, or to
        ``channels[0]`` when ``channels`` is given (they must agree).
    n_scales : int
        Number of 2x2 downsamplings in the encoder (and upsamplings in the
        decoder). Inputs must be multiples of ``2**max(n_scales, 2)`` pixels.
    channel_growth : {"double", "hold"}
        ``"double"``: width doubles per scale up to ``max_channels``.
        ``"hold"``: every scale has ``base_channels``. Ignored when
        ``channels`` is given.
    max_channels : int, optional
        Cap for ``"double"``; default ``16 * base_channels``.
    channels : sequence of int, optional
        Explicit widths of the ``n_scales + 1`` encoder scales; overrides the
        growth rule.
    head_channels : sequence of int, optional
        Widths of the ``log2(output_factor)`` extra downsampling blocks
        (two in the paper); default ``(2 * channels[0], 4 * channels[0])``
        truncated to that number. :func:`paper_config` uses ``(M, 2 M)`` with
        ``M = max(channels)``.
    upsample : {"bilinear", "transpose"}
        Decoder upsampling: bilinear interpolation or 2x2 transposed conv.
    median_size : int
        Window of the median filter before the last 1x1 conv [label pixels];
        1 disables it.
    output_factor : {4, 2, 1}
        Ratio of input to output pixel size. 4 is the paper's network (two
        head downsampling blocks). 1 drops the head's downsampling blocks: the
        UNet then runs on an input binned to the label grid, for 16x fewer
        operations per frame than the paper's layout at the same label grid
        (the fast model of ``segdepth predict``).
    flatten_sigma : float, optional
        Divide the input by its local mean first (:class:`LocalMeanDivide`, Gaussian of this standard
        deviation [input pixels], kept to 6 decimals); ``None`` (default): no such layer. It has no
        weights, so a model may be fine-tuned from one without it
        (:func:`segdepth.learn.training.initial_model`).

    Attributes
    ----------
    required_multiple : int
        Input height and width must be multiples of this [pixels].
    output_factor : int
        Ratio of input to output pixel size.
    config : dict
        JSON-serialisable constructor arguments (resolved), for
        :meth:`from_config`.

    Examples
    --------
    >>> model = UNet(base_channels=4, channels=(4, 8, 8), head_channels=(8, 8), n_scales=2)
    >>> model.eval()(torch.zeros(1, 1, 16, 16)).shape
    torch.Size([1, 11, 4, 4])
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = N_CLASSES,
        *,
        base_channels: int | None = None,
        n_scales: int = 6,
        channel_growth: str = "double",
        max_channels: int | None = None,
        channels: Sequence[int] | None = None,
        head_channels: Sequence[int] | None = None,
        upsample: str = "bilinear",
        median_size: int = 4,
        output_factor: int = 4,
        flatten_sigma: float | None = None,
    ) -> None:
        super().__init__()
        in_channels = check_int(in_channels, "in_channels")
        if output_factor not in (1, 2, 4) or isinstance(output_factor, bool):
            raise ValueError(f"output_factor must be 1, 2 or 4, got {output_factor!r}")
        n_head = int(output_factor).bit_length() - 1
        n_classes = check_int(n_classes, "n_classes")
        median_size = check_int(median_size, "median_size")
        n_scales, max_channels, channels = _widths(base_channels, n_scales, channel_growth, max_channels, channels,
                                                   upsample)
        if head_channels is None:
            head_channels = [2 * channels[0], 4 * channels[0]][:n_head]
        else:
            head_channels = [check_int(c, "head_channels[i]") for c in head_channels]
            if len(head_channels) != n_head:
                raise ValueError(
                    f"head_channels must have log2(output_factor) = {n_head} entries, got {len(head_channels)}"
                )

        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "n_classes": n_classes,
            "base_channels": channels[0],
            "n_scales": n_scales,
            "channel_growth": channel_growth,
            "max_channels": max_channels,
            "channels": list(channels),
            "head_channels": list(head_channels),
            "upsample": upsample,
            "median_size": median_size,
            "output_factor": int(output_factor),
        }
        self.flatten = None
        if flatten_sigma is not None:  # only then in the config: cards of models without the layer stay as they are
            flatten_sigma = round(float(flatten_sigma), 6)  # the same layer whichever way A were turned into pixels
            self.flatten = LocalMeanDivide(flatten_sigma)
            self.config["flatten_sigma"] = flatten_sigma
        self.output_factor = int(output_factor)
        self.required_multiple = 2 ** max(n_scales, n_head)
        self.encoder = Encoder(in_channels, channels)
        self.decoder = Decoder(channels, mode=upsample)
        self.head = Head(channels[0], head_channels, n_classes, median_size=median_size)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> UNet:
        """Build a model from :attr:`config` (e.g. read from a model card)."""
        if not isinstance(config, dict):
            raise ValueError(f"config must be a dict of UNet arguments, got {type(config).__name__}")
        try:
            return cls(**config)
        except TypeError as err:  # unknown keyword
            raise ValueError(f"config is not a valid UNet configuration: {err}") from None

    def check_input_shape(self, shape: Sequence[int]) -> None:
        """Raise ``ValueError`` unless ``shape`` is ``(B, in_channels, H, W)`` with valid ``H, W``.

        The message names the nearest valid (zero- or reflect-) padded shape.
        """
        shape = tuple(shape)
        n_in = self.config["in_channels"]
        if len(shape) != 4 or shape[1] != n_in:
            raise ValueError(f"input must have shape (batch, {n_in}, H, W), got {shape}")
        m = self.required_multiple
        h, w = shape[-2:]
        if h % m or w % m or h == 0 or w == 0:
            padded = (*shape[:2], max(m, math.ceil(h / m) * m), max(m, math.ceil(w / m) * m))
            raise ValueError(
                f"input height and width must be positive multiples of {m} (required_multiple); "
                f"got {shape}, pad to {padded}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes, H / f, W / f)`` (``f = output_factor``) for images ``(B, in_channels, H, W)``."""
        self.check_input_shape(x.shape)
        if self.flatten is not None:
            x = self.flatten(x)
        features = self.encoder(x)
        x = self.decoder(features)
        return self.head(x)


class DenoisingUNet(nn.Module):
    """Supervised denoiser for the denoise-then-segment baselines (paper, Table II).

    The encoder and decoder of :class:`UNet` at full resolution, then a 1x1
    convolution to one channel that is added to the input (residual
    learning): ``out = x + conv(decoder(encoder(x)))``. Trained with the mean
    squared error against the clean image (both normalised by the noisy
    frame's mean, :func:`segdepth.data.preprocess.normalise`).

    Parameters
    ----------
    base_channels, n_scales, channel_growth, max_channels, channels, upsample
        As for :class:`UNet`.

    Attributes
    ----------
    required_multiple : int
        Input height and width must be multiples of this [pixels].
    output_factor : int
        1: the output has the input's grid.
    config : dict
        Constructor arguments plus ``"model": "DenoisingUNet"`` (for :func:`build_model`).
    """

    output_factor = 1

    def __init__(
        self,
        *,
        base_channels: int | None = None,
        n_scales: int = 4,
        channel_growth: str = "double",
        max_channels: int | None = None,
        channels: Sequence[int] | None = None,
        upsample: str = "bilinear",
        model: str = "DenoisingUNet",
    ) -> None:
        super().__init__()
        if model != "DenoisingUNet":
            raise ValueError(f"config describes a {model!r}, not a DenoisingUNet")
        n_scales, max_channels, channels = _widths(base_channels, n_scales, channel_growth, max_channels, channels,
                                                   upsample)
        self.config: dict[str, Any] = {
            "model": "DenoisingUNet",
            "base_channels": channels[0],
            "n_scales": n_scales,
            "channel_growth": channel_growth,
            "max_channels": max_channels,
            "channels": list(channels),
            "upsample": upsample,
        }
        self.required_multiple = 2**n_scales
        self.encoder = Encoder(1, channels)
        self.decoder = Decoder(channels, mode=upsample)
        self.out = nn.Conv2d(channels[0], 1, kernel_size=1)
        nn.init.zeros_(self.out.weight)  # start as the identity: never worse than the noisy input
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoised image ``(B, 1, H, W)`` for noisy normalised images ``(B, 1, H, W)``."""
        m = self.required_multiple
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(
                f"input must have shape (batch, 1, H, W) with H, W multiples of {self.required_multiple}; "
                f"got {tuple(x.shape)}"
            )
        return x + self.out(self.decoder(self.encoder(x)))


class DenoiseSegment(nn.Module):
    """A denoiser followed by a segmentation UNet: ``logits = segmenter(denoiser(x))``.

    Two baselines of the paper (Table II) share this module:

    - *sequential*: a trained denoiser is frozen (``freeze_denoiser=True``:
      its parameters take no gradient and it stays in eval mode) and the
      segmentation network is trained on its outputs;
    - *joint*: both are trained together on the sum of the cross-entropy and
      the denoising MSE (``freeze_denoiser=False``).

    ``forward`` returns the segmentation logits, so the model drops into
    every evaluation and prediction function written for :class:`UNet`;
    :meth:`denoise` gives the intermediate image.

    Parameters
    ----------
    denoiser : dict
        :attr:`DenoisingUNet.config`.
    segmenter : dict
        :attr:`UNet.config`.
    freeze_denoiser : bool
        See above.
    """

    def __init__(self, *, denoiser: dict, segmenter: dict, freeze_denoiser: bool = False,
                 model: str = "DenoiseSegment") -> None:
        super().__init__()
        if model != "DenoiseSegment":
            raise ValueError(f"config describes a {model!r}, not a DenoiseSegment")
        self.denoiser = build_model(denoiser)
        self.segmenter = build_model(segmenter)
        if not isinstance(self.denoiser, DenoisingUNet) or not isinstance(self.segmenter, UNet):
            raise ValueError("DenoiseSegment needs a DenoisingUNet config and a UNet config")
        self.freeze_denoiser = bool(freeze_denoiser)
        if self.freeze_denoiser:
            self.denoiser.requires_grad_(False)
        self.config: dict[str, Any] = {
            "model": "DenoiseSegment",
            "denoiser": self.denoiser.config,
            "segmenter": self.segmenter.config,
            "freeze_denoiser": self.freeze_denoiser,
        }
        self.required_multiple = math.lcm(self.denoiser.required_multiple, self.segmenter.required_multiple)
        self.output_factor = self.segmenter.output_factor

    def train(self, mode: bool = True) -> DenoiseSegment:
        super().train(mode)
        if self.freeze_denoiser:
            self.denoiser.eval()  # frozen: batch-norm statistics stay those of its own training
        return self

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """The denoiser's output ``(B, 1, H, W)``."""
        return self.denoiser(x)

    def forward(self, x: torch.Tensor, return_denoised: bool = False):
        """Segmentation logits ``(B, n_classes, H / 4, W / 4)`` (and the denoised image if asked)."""
        denoised = self.denoiser(x)
        logits = self.segmenter(denoised)
        return (logits, denoised) if return_denoised else logits


def build_model(config: dict[str, Any]) -> nn.Module:
    """Rebuild any SegDepth network from its ``config`` (e.g. a model card's ``architecture``).

    ``config["model"]`` names the class (``"DenoisingUNet"``, ``"DenoiseSegment"``);
    without that key it is a :class:`UNet` config.
    """
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict of model arguments, got {type(config).__name__}")
    kind = config.get("model", "UNet")
    classes = {"UNet": UNet, "DenoisingUNet": DenoisingUNet, "DenoiseSegment": DenoiseSegment}
    if kind not in classes:
        raise ValueError(f"unknown model class {kind!r} in config; expected one of {sorted(classes)}")
    if kind == "UNet":
        return UNet.from_config(config)
    try:
        return classes[kind](**config)
    except TypeError as err:
        raise ValueError(f"config is not a valid {kind} configuration: {err}") from None


def paper_config(base_channels: int) -> dict[str, Any]:
    """Our reconstruction of the paper's architecture for a Table I base width.

    Base widths below 64 double up to ``16 * base_channels``; 64 and above
    double up to ``4 * base_channels`` (see the module docstring). The head
    widens to ``(M, 2 M)`` with ``M`` the widest encoder width. Returns a
    :attr:`UNet.config`-style dict for :meth:`UNet.from_config`.
    """
    base = check_int(base_channels, "base_channels")
    cap = 16 * base if base < 64 else 4 * base
    channels = _resolve_channels(base, 6, "double", cap)
    return UNet(
        channels=channels, channel_growth="double", max_channels=cap, head_channels=(max(channels), 2 * max(channels))
    ).config


def optimise_for_inference(model: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` with every batch norm folded into the convolution before it.

    Folding (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`) is exact up to
    float rounding; with ``channels_last`` the weights use the NHWC layout that
    oneDNN's CPU convolutions prefer (feed inputs with
    ``x.contiguous(memory_format=torch.channels_last)``; for the small
    binned-input model the two layouts measured within run-to-run noise of
    each other, ``benchmarks/inference_speed.py``). The original model is not
    changed. ``segdepth.learn.inference`` uses this by default; its ``fast=False``
    keeps the plain eager path as the reference.
    """
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (name_a, a), (name_b, b) in zip(children[:-1], children[1:]):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    setattr(module, name_a, fuse_conv_bn_eval(a, b))
                    setattr(module, name_b, nn.Identity())
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    fused.inference_layout = "channels_last" if channels_last else "contiguous"  # marks an optimised copy
    return fused


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; batch-norm running statistics excluded."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parameter_table(base_channels: Sequence[int] = (16, 32, 64, 96, 130)) -> list[tuple[int, int, float]]:
    """Rows ``(base_channels, ours, paper)`` comparing parameter counts with Table I.

    ``ours`` is :func:`count_parameters` of ``UNet.from_config(paper_config(b))``;
    ``paper`` is :data:`PAPER_TABLE_I` (NaN for widths not in the table).
    """
    rows = []
    for b in base_channels:
        with torch.device("meta"):  # counts only, no memory
            model = UNet.from_config(paper_config(b))
        rows.append((int(b), count_parameters(model), PAPER_TABLE_I.get(int(b), math.nan)))
    return rows


def predict_proba(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel depth distribution ``F(y) = softmax(model(x))`` over the class axis.

    Runs under :func:`torch.no_grad`; the caller sets ``model.eval()``.

    Returns
    -------
    torch.Tensor
        ``(B, n_classes, H / 4, W / 4)``, summing to 1 over axis 1.
    """
    with torch.no_grad():
        return torch.softmax(model(x), dim=1)


def format_parameter_table(base_channels: Sequence[int] = (16, 32, 64, 96, 130)) -> str:
    """Markdown table of :func:`parameter_table` (ours vs the paper's Table I, in millions)."""
    rows = ["| base channels | ours (1e6) | paper Table I (1e6) | ratio |", "| --- | --- | --- | --- |"]
    for b, ours, paper in parameter_table(base_channels):
        rows.append(f"| {b} | {ours / 1e6:.2f} | {paper / 1e6:.2f} | {ours / paper:.3f} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m segdepth.learn.model
    print(format_parameter_table())
