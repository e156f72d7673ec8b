"""SegDepth: atomic depth estimation from noisy HRTEM images (Leibovich et al.)."""

from __future__ import annotations

__version__ = "0.1.0"
