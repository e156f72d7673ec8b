"""``python -m segdepth``: see :mod:`segdepth.cli`."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
