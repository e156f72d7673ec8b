"""``python -m segdepth``: see :mod:`segdepth.apps.cli`."""

from __future__ import annotations

from segdepth.apps.cli import main

raise SystemExit(main())
