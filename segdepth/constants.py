"""The few numbers every stage shares, defined once (no numpy, no torch: safe to import anywhere).

CeO2 (fluorite, Fm-3m) seen along [110]: x = [1-10], y = [001], beam z = [110].
"""

from __future__ import annotations

import math
import numbers

__all__ = [
    "LATTICE_CONSTANT", "PERIOD_X", "Z_CE", "Z_O", "SYMBOLS", "MAX_ATOMS", "N_CLASSES", "check_int",
]

#: CeO2 lattice constant [A] (fluorite, room temperature; the paper's value, ../shared/PHYSICS.md).
LATTICE_CONSTANT = 5.411
#: Column repeat along x = [1-10] [A] (a / sqrt 2 = 3.826 A); the repeat along y = [001] is ``LATTICE_CONSTANT``.
PERIOD_X = LATTICE_CONSTANT / math.sqrt(2)
#: Atomic numbers of cerium and oxygen.
Z_CE, Z_O = 58, 8
#: Element symbol of each atomic number used.
SYMBOLS = {Z_CE: "Ce", Z_O: "O"}
#: Largest number of atoms per column that the labels and the network know.
MAX_ATOMS = 10
#: Depth classes of the network: 0 (vacuum / no column) to ``MAX_ATOMS`` atoms.
N_CLASSES = MAX_ATOMS + 1


def check_int(value, name: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) within ``[minimum, maximum]``.

    Raises
    ------
    ValueError
        One line naming ``name``: "must be a positive integer" (``minimum`` 1) or "must be an
        integer >= minimum" / "within minimum-maximum".
    """
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and value >= minimum and (maximum is None or value <= maximum):
        return int(value)
    if maximum is not None:
        what = f"an integer within {minimum}-{maximum}"
    elif minimum == 1:
        what = "a positive integer"
    else:
        what = f"an integer >= {minimum}"
    raise ValueError(f"{name} must be {what}, got {value!r}")
