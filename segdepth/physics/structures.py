"""Atomic models of CeO2 nanoparticle surfaces viewed along [110].

The orthogonal CeO2 cell used here has x = [1-10] (3.826 A), y = [001]
(5.411 A) and z = [110] (3.826 A, the beam direction). It holds 2 Ce and 4 O
atoms; every projected column is pure Ce or pure O and holds one atom per
3.826 A along the beam, so a column of ``n`` atoms is ``n`` cells thick.

A nanoparticle model is an island of crystal inside a vacuum margin. Its
right-hand side (+x) is the (1-10) surface under study, seen edge-on, with a
``flat``, ``sawtooth`` or ``stepped`` profile along y; the other sides are flat
(001) and (-110) facets. The number of atoms per column follows a bulk
thickness that thins gradually (a wedge) towards every edge of the island, with
optional random +-1 roughness and random oxygen vacancies. Every random choice
comes from an explicit :class:`numpy.random.Generator`.

References
----------
Leibovich et al., "Atomic Depth Estimation From Noisy Electron Microscopy Data
Via Deep Learning" (CeO2 surface models, Sec. III).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from ase import Atoms
from ase.spacegroup import crystal

from segdepth.constants import LATTICE_CONSTANT, MAX_ATOMS, Z_O, check_int

__all__ = [
    "LATTICE_CONSTANT",
    "SURFACES",
    "OUTLINES",
    "STACKINGS",
    "FACET_NORMALS",
    "MAX_ATOMS",
    "ParticleSpec",
    "Structure",
    "ceo2_110_cell",
    "projected_columns",
    "build_particle",
    "random_particle_spec",
    "on_amorphous_support",
    "CARBON_DENSITY",
]

SURFACES = ("flat", "sawtooth", "stepped")
#: Outline families: the three (1-10) surface profiles of a rectangular island (the paper's),
#: ``faceted`` (a convex particle bounded by the facets seen edge-on along [110]) and
#: ``multi`` (two or three faceted particles in one field).
OUTLINES = SURFACES + ("faceted", "multi")
#: Where the atoms of a column sit along the beam: ``centred`` on the slab's mid-plane (a free particle with a
#: mirror plane normal to [110]; the default), flush with the ``entrance`` (top, low z) or the ``exit`` (bottom,
#: high z: the plane the defocus is measured from) surface (a particle on a support, seen from either side), or
#: at a ``random`` height per column (a rough 3D particle). Only ``random`` draws random numbers, after all
#: others: the counts and vacancies of a structure do not depend on its stacking.
STACKINGS = ("centred", "entrance", "exit", "random")
#: In-plane angles [degrees from +x = [1-10]] of the facet normals seen edge-on along [110]:
#: {110} (0, 180), {111} (+-35.26, 180 -+ 35.26: normal (sqrt 2, 1) in (x, y)) and {100} (+-90).
FACET_NORMALS = (0.0, 35.264, 90.0, 144.736, 180.0, 215.264, 270.0, 324.736)

_PERIOD_X = LATTICE_CONSTANT / np.sqrt(2)  # [1-10] repeat, 3.826 A
_PERIOD_Y = LATTICE_CONSTANT  # [001] repeat
_PERIOD_Z = LATTICE_CONSTANT / np.sqrt(2)  # [110] repeat (beam)


def ceo2_110_cell(a: float = LATTICE_CONSTANT) -> Atoms:
    """Orthogonal CeO2 cell with [110] along z (2 Ce + 4 O).

    Built from the fluorite crystal (space group 225, Ce at (0,0,0), O at
    (1/4,1/4,1/4)) by rotating into x = [1-10], y = [001], z = [110], wrapping
    and removing duplicates.

    Parameters
    ----------
    a : float
        Cubic lattice constant [A].
    """
    bulk = crystal(["Ce", "O"], basis=[(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=225, cellpar=[a, a, a, 90, 90, 90])
    bulk = bulk.repeat((2, 2, 2))
    pos = bulk.get_positions()
    u = (pos[:, 0] - pos[:, 1]) / np.sqrt(2)
    v = pos[:, 2]
    w = (pos[:, 0] + pos[:, 1]) / np.sqrt(2)
    lx, ly, lz = a / np.sqrt(2), a, a / np.sqrt(2)
    new = np.stack([np.mod(u, lx), np.mod(v, ly), np.mod(w, lz)], axis=1)
    new[np.isclose(new, [lx, ly, lz], atol=1e-6)] = 0.0
    new = np.round(new, 6)
    keys, index = np.unique(np.round(new, 4), axis=0, return_index=True)
    numbers = bulk.numbers[index]
    cell = Atoms(numbers=numbers, positions=new[index], cell=[lx, ly, lz], pbc=True)
    if sorted(cell.get_chemical_symbols()) != ["Ce"] * 2 + ["O"] * 4:
        raise RuntimeError("CeO2 [110] cell construction failed")  # pragma: no cover
    return cell


def projected_columns(a: float = LATTICE_CONSTANT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Projected column positions of one [110] cell.

    Returns
    -------
    xy : ndarray, shape (6, 2)
        Column positions in the cell [A].
    z_offset : ndarray, shape (6,)
        Height of the column's atom inside the 3.826 A repeat [A].
    numbers : ndarray, shape (6,)
        Atomic numbers (58 Ce, 8 O).
    """
    cell = ceo2_110_cell(a)
    pos = cell.get_positions()
    return pos[:, :2].copy(), pos[:, 2].copy(), cell.numbers.copy()


@dataclass(frozen=True)
class ParticleSpec:
    """Geometry of one nanoparticle-surface model.

    Parameters
    ----------
    extent : tuple of float
        Size of the simulation cell in x and y [A].
    surface : str
        Profile of the (1-10) surface: ``"flat"``, ``"sawtooth"`` or ``"stepped"``.
    thickness : int
        Bulk thickness, atoms per column (1-10) away from the edges.
    vacuum : float
        Minimum vacuum between the crystal and the cell edges [A] (>= 10).
    surface_position : float
        Mean x of the studied surface [A].
    x_start, y_start, y_stop : float
        The other island edges [A].
    wedge : float
        Width over which the thickness ramps up from the edges [A].
    amplitude : float
        Peak-to-peak depth of sawtooth teeth / total height of steps [A].
    period : float
        Period of the sawtooth / width of a terrace along y [A].
    phase : float
        Offset of the profile along y [A].
    roughness : float
        Probability of a +-1 atom change per column.
    vacancy_rate : float
        Probability that any O atom is missing.
    edge_wedge : bool
        Island outlines: also thin towards the other three edges.
    particles : tuple of tuple
        ``faceted`` / ``multi``: one ``(x, y, thickness, d_1, ..., d_8)`` per
        particle: centre [A], bulk thickness [atoms] and the distance [A] of
        each facet (normals :data:`FACET_NORMALS`) from the centre.
    surface_vacancy_rate : float
        Extra O vacancy probability within ``surface_depth`` of the outline
        (surface-rich vacancies).
    surface_depth : float
        Depth of the surface layer [A].
    surface_short : float
        Probability that a column within ``surface_depth`` of the outline is
        cut to 1-3 atoms (short columns on the surface).
    adatoms : int
        Number of 1-2 atom columns at lattice sites within 3.5 A outside the
        outline (adatoms).
    stacking : str
        Where each column's atoms sit along the beam (:data:`STACKINGS`).
    """

    extent: tuple[float, float]
    surface: str = "flat"
    thickness: int = 6
    vacuum: float = 10.0
    surface_position: float | None = None
    x_start: float | None = None
    y_start: float | None = None
    y_stop: float | None = None
    wedge: float = 6.0
    amplitude: float = 4.0
    period: float = 10.0
    phase: float = 0.0
    roughness: float = 0.0
    vacancy_rate: float = 0.0
    edge_wedge: bool = True
    extra: dict = field(default_factory=dict)
    particles: tuple = ()
    surface_vacancy_rate: float = 0.0
    surface_depth: float = 4.0
    surface_short: float = 0.0
    adatoms: int = 0
    stacking: str = "centred"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad parameter."""
        if self.surface not in OUTLINES:
            raise ValueError(f"surface must be one of {OUTLINES}, got {self.surface!r}")
        if self.stacking not in STACKINGS:
            raise ValueError(f"stacking must be one of {STACKINGS}, got {self.stacking!r}")
        if self.surface in ("faceted", "multi"):
            if not self.particles or any(len(p) != 3 + len(FACET_NORMALS) for p in self.particles):
                raise ValueError(
                    f"outline {self.surface!r} needs particles of (x, y, thickness, {len(FACET_NORMALS)} facet "
                    f"distances), got {self.particles!r}"
                )
            for p in self.particles:
                if not 1 <= int(p[2]) <= MAX_ATOMS or min(p[3:]) <= 0:
                    raise ValueError(f"particle {p!r}: thickness must be 1-{MAX_ATOMS}, facet distances > 0")
        for name in ("surface_vacancy_rate", "surface_short"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0-1, got {getattr(self, name)}")
        check_int(self.adatoms, "adatoms", minimum=0)
        check_int(self.thickness, "thickness (atoms per column)", maximum=MAX_ATOMS)
        if not self.vacuum >= 10.0:
            raise ValueError(f"vacuum must be >= 10 A (the potential is periodic), got {self.vacuum}")
        if not 0.0 <= self.vacancy_rate <= 1.0:
            raise ValueError(f"vacancy_rate must be within 0-1, got {self.vacancy_rate}")
        if not 0.0 <= self.roughness <= 1.0:
            raise ValueError(f"roughness must be within 0-1, got {self.roughness}")
        if self.wedge < 0:
            raise ValueError(f"wedge must be >= 0 A, got {self.wedge}")
        if self.period <= 0:
            raise ValueError(f"period must be > 0 A, got {self.period}")
        ex, ey = self.extent
        if min(ex, ey) <= 2 * self.vacuum:
            raise ValueError(f"extent {self.extent} A leaves no room for crystal inside {self.vacuum} A of vacuum")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["extent"] = list(d["extent"])
        d["particles"] = [list(p) for p in d["particles"]]
        return d


@dataclass
class Structure:
    """An atomic model with its projected column table.

    Attributes
    ----------
    atoms : ase.Atoms
        All atoms, positions in the physical frame [A] (the image pixel ``i``
        centre is at ``(i + 0.5) * sampling``).
    column_x, column_y : ndarray
        Projected column centres [A].
    column_Z : ndarray
        Atomic number of each column (58 Ce or 8 O).
    column_count : ndarray
        Atoms actually present in each column (vacancies removed; >= 1).
    spec : ParticleSpec
        The geometry it was built from.
    """

    atoms: Atoms
    column_x: np.ndarray
    column_y: np.ndarray
    column_Z: np.ndarray
    column_count: np.ndarray
    spec: ParticleSpec

    @property
    def n_columns(self) -> int:
        return int(self.column_x.size)


def _surface_profile(spec: ParticleSpec, y: np.ndarray) -> np.ndarray:
    """x position of the studied surface as a function of y [A]."""
    s0 = spec.surface_position
    t = (y - spec.phase) / spec.period
    if spec.surface == "flat":
        return np.full_like(y, s0, dtype=float)
    if spec.surface == "sawtooth":
        tri = 2.0 * np.abs(t - np.floor(t + 0.5))  # 0..1 triangle wave
        return s0 + spec.amplitude * (tri - 0.5)
    # stepped: terraces of width `period`, rising by `amplitude / n_steps` per terrace,
    # the staircase going up and back down so that the island stays compact
    n_steps = 3
    k = np.floor(t).astype(int)
    level = np.abs(((k + n_steps) % (2 * n_steps)) - n_steps)  # 0..n_steps..0
    return s0 + spec.amplitude * (level / n_steps - 0.5)


def build_particle(spec: ParticleSpec, *, rng: np.random.Generator) -> Structure:
    """Build the atoms and column table of a nanoparticle-surface model.

    Parameters
    ----------
    spec : ParticleSpec
        Geometry (validated here; bad values raise ``ValueError``).
    rng : numpy.random.Generator
        Source of randomness for roughness and vacancies.
    """
    spec.validate()
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be a numpy.random.Generator")
    ex, ey = spec.extent
    vac = spec.vacuum
    s0 = spec.surface_position if spec.surface_position is not None else 0.6 * ex
    spec = _replace(spec, surface_position=s0)
    x0 = spec.x_start if spec.x_start is not None else vac
    y0 = spec.y_start if spec.y_start is not None else vac
    y1 = spec.y_stop if spec.y_stop is not None else ey - vac
    x0, y0, y1 = max(x0, vac), max(y0, vac), min(y1, ey - vac)

    xy, zoff, numbers = projected_columns()
    nx = int(np.ceil(ex / _PERIOD_X)) + 1
    ny = int(np.ceil(ey / _PERIOD_Y)) + 1
    ix, iy = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    cx = (ix.ravel()[:, None] * _PERIOD_X + xy[None, :, 0]).ravel()
    cy = (iy.ravel()[:, None] * _PERIOD_Y + xy[None, :, 1]).ravel()
    cz = np.tile(zoff, ix.size)
    cZ = np.tile(numbers, ix.size)

    if spec.surface in SURFACES:
        surf = np.minimum(_surface_profile(spec, cy), ex - vac)
        inside = (cx >= x0) & (cx <= surf) & (cy >= y0) & (cy <= y1)
        cx, cy, cz, cZ, surf = cx[inside], cy[inside], cz[inside], cZ[inside], surf[inside]
        # thickness: bulk value, thinning linearly towards the edges over `wedge`
        dist = surf - cx
        if spec.edge_wedge:  # the other facets thin over half the wedge width
            dist = np.minimum.reduce([dist, 2 * (cx - x0), 2 * (cy - y0), 2 * (y1 - cy)])
        bulk = np.full(dist.shape, spec.thickness)
        adatom = np.zeros(dist.shape, bool)
    else:
        dist, bulk = _facet_distance(spec, cx, cy)
        margin = (cx >= vac) & (cx <= ex - vac) & (cy >= vac) & (cy <= ey - vac)
        adatom = _pick_adatoms(dist, margin, spec.adatoms, rng)
        inside = ((dist >= 0) & margin) | adatom
        cx, cy, cz, cZ, dist, bulk, adatom = (a[inside] for a in (cx, cy, cz, cZ, dist, bulk, adatom))
    ramp = np.ones_like(dist) if spec.wedge == 0 else np.clip((dist + _PERIOD_X / 2) / spec.wedge, 0.0, 1.0)
    count = np.ceil(bulk * ramp - 1e-9).astype(int)
    if spec.roughness > 0:
        bump = rng.choice([-1, 0, 1], size=count.size, p=[spec.roughness / 2, 1 - spec.roughness, spec.roughness / 2])
        count = count + bump
    near_surface = (dist < spec.surface_depth) & ~adatom
    if spec.surface_short > 0:
        short = near_surface & (rng.random(count.size) < spec.surface_short)
        count = np.where(short, np.minimum(count, rng.integers(1, 4, size=count.size)), count)
    if adatom.any():
        count = np.where(adatom, rng.integers(1, 3, size=count.size), count)
    count = np.clip(count, 1, MAX_ATOMS)

    # stack atoms along the beam, centred on the slab mid-plane
    n_max = int(count.max()) if count.size else 1
    positions = []
    for x, y, z, n in zip(cx, cy, cz, count):
        k0 = (n_max - n) // 2
        zcol = z + _PERIOD_Z * (k0 + np.arange(n))
        positions.append(np.column_stack([np.full(n, x), np.full(n, y), zcol]))
    pos = np.concatenate(positions) if positions else np.zeros((0, 3))
    col_index = np.repeat(np.arange(count.size), count)
    Z = np.repeat(cZ, count)

    if spec.vacancy_rate > 0 or spec.surface_vacancy_rate > 0:
        rate = spec.vacancy_rate + spec.surface_vacancy_rate * near_surface[col_index]
        keep = ~((Z == Z_O) & (rng.random(Z.size) < rate))
        pos, Z, col_index = pos[keep], Z[keep], col_index[keep]
    if spec.stacking != "centred":  # move each column from the mid-plane to its stacking (after every other draw)
        centred = (n_max - count) // 2
        k0 = {"entrance": np.zeros_like(count), "exit": n_max - count}.get(spec.stacking)
        if k0 is None:  # random
            k0 = rng.integers(0, n_max - count + 1)
        pos = pos.copy()
        pos[:, 2] += _PERIOD_Z * (k0 - centred)[col_index]
    present = np.bincount(col_index, minlength=count.size)
    has_atoms = present > 0

    atoms = Atoms(numbers=Z, positions=pos, cell=[ex, ey, max(n_max * _PERIOD_Z, _PERIOD_Z)], pbc=True)
    return Structure(
        atoms=atoms,
        column_x=cx[has_atoms].astype(np.float64),
        column_y=cy[has_atoms].astype(np.float64),
        column_Z=cZ[has_atoms].astype(np.uint8),
        column_count=present[has_atoms].astype(np.uint8),
        spec=spec,
    )


def _facet_distance(spec: ParticleSpec, cx: np.ndarray, cy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance [A] inside the nearest-containing faceted particle (negative outside) and its bulk thickness."""
    normals = np.deg2rad(np.asarray(FACET_NORMALS))
    nx, ny = np.cos(normals), np.sin(normals)
    best = np.full(cx.shape, -np.inf)
    bulk = np.zeros(cx.shape, int)
    for p in spec.particles:
        x, y, t, d = float(p[0]), float(p[1]), int(p[2]), np.asarray(p[3:], float)
        proj = (cx[:, None] - x) * nx[None, :] + (cy[:, None] - y) * ny[None, :]
        dist = np.min(d[None, :] - proj, axis=1)
        better = dist > best
        best = np.where(better, dist, best)
        bulk = np.where(better, t, bulk)
    return best, bulk


def _pick_adatoms(dist: np.ndarray, allowed: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Mark up to ``n`` lattice sites within 3.5 A outside the outline as adatom columns."""
    out = np.zeros(dist.shape, bool)
    if n <= 0:
        return out
    candidates = np.flatnonzero((dist < 0) & (dist > -3.5) & allowed)
    if candidates.size:
        out[rng.choice(candidates, size=min(n, candidates.size), replace=False)] = True
    return out


def _replace(spec: ParticleSpec, **changes) -> ParticleSpec:
    d = asdict(spec)
    d.update(changes)
    d["extent"] = tuple(d["extent"])
    d["particles"] = tuple(tuple(p) for p in d["particles"])
    return ParticleSpec(**d)


def random_particle_spec(
    extent: tuple[float, float],
    *,
    rng: np.random.Generator,
    surfaces: tuple[str, ...] = SURFACES,
    thickness_range: tuple[int, int] = (3, 10),
    vacuum: float = 10.0,
    vacancy_max: float = 0.0,
    vacancy_probability: float = 0.5,
    wedge_range: tuple[float, float] = (0.0, 8.0),
    surface_vacancy_max: float = 0.0,
    surface_short_max: float = 0.0,
    adatoms_max: int = 0,
) -> ParticleSpec:
    """Draw a varied particle geometry: outline, thickness profile, vacuum fraction, vacancies.

    Parameters
    ----------
    extent : tuple of float
        Cell size [A].
    rng : numpy.random.Generator
        Source of randomness.
    surfaces : tuple of str
        Outline families to choose from (uniformly), any of :data:`OUTLINES`.
    thickness_range : tuple of int
        Inclusive range of the bulk thickness [atoms per column], within 1-10.
    vacuum : float
        Vacuum margin at the cell edges [A].
    vacancy_max : float
        Upper bound of the O vacancy rate; a structure gets a rate drawn
        uniformly in [0, vacancy_max] with probability ``vacancy_probability``.
    wedge_range : (float, float)
        Range of the wedge width [A] (0: abrupt edges; 20: gentle).
    surface_vacancy_max : float
        Upper bound of the extra O vacancy rate of the surface layer (drawn
        together with the bulk rate, for the same structures).
    surface_short_max : float
        Upper bound of the probability that a surface column is cut to 1-3 atoms.
    adatoms_max : int
        Largest number of adatom columns.

    With the last four at their defaults the draws are those of earlier
    versions (the same seed gives the same particle).
    """
    lo, hi = thickness_range
    if not (1 <= lo <= hi <= MAX_ATOMS):
        raise ValueError(f"thickness_range must satisfy 1 <= lo <= hi <= {MAX_ATOMS}, got {thickness_range}")
    for s in surfaces:
        if s not in OUTLINES:
            raise ValueError(f"surface must be one of {OUTLINES}, got {s!r}")
    w0, w1 = wedge_range
    if not 0 <= w0 <= w1:
        raise ValueError(f"wedge_range must be (lo, hi) with 0 <= lo <= hi [A], got {wedge_range}")
    ex, ey = extent
    inner_x = ex - 2 * vacuum
    inner_y = ey - 2 * vacuum
    if inner_x <= 4 or inner_y <= 4:
        raise ValueError(f"extent {extent} A is too small for {vacuum} A of vacuum on each side")
    # fraction of the inner area that is vacuum beyond the surface: 10-45 %
    surface_position = vacuum + inner_x * rng.uniform(0.55, 0.9)
    x_start = vacuum + inner_x * rng.uniform(0.0, 0.1)
    y_start = vacuum + inner_y * rng.uniform(0.0, 0.1)
    y_stop = ey - vacuum - inner_y * rng.uniform(0.0, 0.1)
    has_vacancies = vacancy_max > 0 and rng.random() < vacancy_probability
    rate = float(rng.uniform(0, vacancy_max)) if has_vacancies else 0.0
    surface = str(rng.choice(list(surfaces)))
    thickness = int(rng.integers(lo, hi + 1))
    wedge = float(rng.uniform(w0, w1))
    amplitude = float(rng.uniform(2.0, 0.3 * inner_x))
    period = float(rng.uniform(4.0, max(5.0, 0.6 * inner_y)))
    phase = float(rng.uniform(0.0, 10.0))
    roughness = float(rng.choice([0.0, 0.1, 0.25]))
    extras = {}
    if surface in ("faceted", "multi"):
        extras["particles"] = _random_particles(
            (ex, ey), vacuum, 1 if surface == "faceted" else int(rng.integers(2, 4)), (lo, hi), rng
        )
    if surface_vacancy_max > 0 and has_vacancies:
        extras["surface_vacancy_rate"] = float(rng.uniform(0, surface_vacancy_max))
    if surface_short_max > 0:
        extras["surface_short"] = float(rng.uniform(0, surface_short_max))
    if adatoms_max > 0:
        extras["adatoms"] = int(rng.integers(0, adatoms_max + 1))
    return ParticleSpec(
        extent=(float(ex), float(ey)),
        surface=surface,
        thickness=thickness,
        vacuum=float(vacuum),
        surface_position=float(surface_position),
        x_start=float(x_start),
        y_start=float(y_start),
        y_stop=float(y_stop),
        wedge=wedge,
        amplitude=amplitude,
        period=period,
        phase=phase,
        roughness=roughness,
        vacancy_rate=rate,
        **extras,
    )


def _random_particles(extent, vacuum: float, n: int, thickness_range, rng: np.random.Generator) -> tuple:
    """``n`` convex faceted particles: centre, bulk thickness, 8 facet distances [A].

    A particle may reach past the vacuum margin (it is then cut there, like a
    particle cut by the edge of the field of view).
    """
    ex, ey = extent
    inner = min(ex, ey) - 2 * vacuum
    out = []
    for _ in range(n):
        radius = rng.uniform(0.4, 0.75) * inner / (1.0 if n == 1 else 1.5)
        x = rng.uniform(vacuum + 0.2 * radius, ex - vacuum - 0.2 * radius)
        y = rng.uniform(vacuum + 0.2 * radius, ey - vacuum - 0.2 * radius)
        d = radius * rng.uniform(0.55, 1.15, size=len(FACET_NORMALS))
        t = int(rng.integers(thickness_range[0], thickness_range[1] + 1))
        out.append(tuple(float(v) for v in (x, y, t, *d)))
    return tuple(out)


#: Number density of amorphous carbon at 2.0 g/cm^3 [atoms per A^3] (evaporated carbon support films: 1.8-2.1).
CARBON_DENSITY = 2.0 * 6.02214e23 / 12.011 * 1e-24
#: No two support atoms closer than this [A] (a carbon-carbon bond is 1.4-1.5 A).
_SUPPORT_MIN_DISTANCE = 1.3


def on_amorphous_support(structure: Structure, thickness: float, *, rng: np.random.Generator) -> Structure:
    """``structure`` on an amorphous carbon film ``thickness`` [A] thick across the whole field, on the beam's exit
    side (beyond the particle's largest z), 2 A below it.

    The film is random carbon atoms at :data:`CARBON_DENSITY`, re-drawn where two come closer than 1.3 A (a
    random close packing without bond-angle order; its image is the speckle of an amorphous support). The column
    table is unchanged (the film has no columns); the cell grows along z to hold it. ``thickness`` 0 returns
    ``structure`` itself.
    """
    from scipy.spatial import cKDTree

    if not (isinstance(thickness, int | float | np.number) and math.isfinite(thickness) and thickness >= 0):
        raise ValueError(f"support thickness must be a length >= 0 [A], got {thickness!r}")
    if thickness == 0:
        return structure
    atoms = structure.atoms
    ex, ey = atoms.cell.lengths()[:2]
    z0 = (float(atoms.positions[:, 2].max()) if len(atoms) else 0.0) + 2.0
    lo, hi = (0.0, 0.0, z0), (ex, ey, z0 + thickness)
    n = int(round(CARBON_DENSITY * ex * ey * thickness))
    points = rng.uniform(lo, hi, (n, 3))
    for _ in range(100):
        pairs = np.array(sorted(cKDTree(points).query_pairs(_SUPPORT_MIN_DISTANCE)), dtype=int).reshape(-1, 2)
        close = np.unique(pairs[:, 1])
        if close.size == 0:
            break
        points[close] = rng.uniform(lo, hi, (close.size, 3))
    both = atoms + Atoms(numbers=np.full(n, 6), positions=points)
    both.set_cell([ex, ey, z0 + thickness + 1.0])
    both.pbc = True
    return dataclasses.replace(structure, atoms=both)
