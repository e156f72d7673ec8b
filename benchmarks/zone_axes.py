"""CeO2 seen along other zone axes: does the validity check refuse what the counting models never saw?

Run: ``python benchmarks/zone_axes.py [--zones 110 100 111 112 310] [--lam 2.5 10] [--out FILE]`` (about 2 min on
2 cores). Every model here counts CeO2 viewed along [110]; a particle in a real specimen lies in any orientation,
and a microscopist tilts one zone axis into the beam, not necessarily [110]. For each zone a CeO2 crystal is cut
from bulk fluorite (``ase.spacegroup.crystal``, a = 5.411 A) as a box ``--thickness`` A thick along the zone and 8 A
short of the field on each side (a 27 A field, 1024 x 1024 at 0.0265 A binned 2x to 0.053 A), turned so that the
zone is the beam (any in-plane direction), imaged with the paper's nominal lens at 5 nm overfocus and a focal spread
of sigma 21 A (the incoherent average), given Poisson noise at each ``--lam`` and read by ``segdepth predict``'s
checked path (:func:`segdepth.learn.validity.predict_checked`, the default pair, the dose given, the orientation
measured). Printed: of the label pixels over the crystal (more than 3 A inside its box), the fraction the check
calls crystal, vouches for (reason ``ceo2_110``) and refuses as ``other_lattice`` / ``turned_lattice`` /
``model_disagreement``, and the mean count read there. [110] is the control (it should be vouched for); the others
should not be (a count of a [100] column is not what the models learned).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

GPTS = 1024
SAMPLING = 0.0265
MARGIN = 8.0  # [A] of vacuum between the crystal box and the field edge


def oriented_box(zone, thickness: float, extent: float, rng: np.random.Generator):
    """Atoms of fluorite CeO2 with ``zone`` along z, cut to a box (``extent`` minus the margins, ``thickness``)."""
    from ase import Atoms
    from ase.spacegroup import crystal

    from segdepth.physics.structures import LATTICE_CONSTANT

    a = LATTICE_CONSTANT
    beam = np.asarray(zone, float) / np.linalg.norm(zone)
    helper = np.array([0.0, 0.0, 1.0]) if abs(beam[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = np.cross(helper, beam)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(beam, e1)
    turn = rng.uniform(0, 2 * np.pi)  # any in-plane direction: the check must not depend on it
    e1, e2 = np.cos(turn) * e1 + np.sin(turn) * e2, -np.sin(turn) * e1 + np.cos(turn) * e2
    half = np.sqrt(2 * (extent / 2) ** 2 + (thickness / 2) ** 2)
    n = int(np.ceil(half / a)) + 1
    bulk = crystal(["Ce", "O"], basis=[(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=225, cellpar=[a, a, a, 90, 90, 90])
    bulk = bulk.repeat((2 * n, 2 * n, 2 * n))
    p = bulk.get_positions() - n * a + rng.uniform(0, a, 3)  # a random origin inside the unit cell
    q = np.stack([p @ e1, p @ e2, p @ beam], axis=1)
    inner = extent / 2 - MARGIN
    keep = (np.abs(q[:, 0]) <= inner) & (np.abs(q[:, 1]) <= inner) & (np.abs(q[:, 2]) <= thickness / 2)
    q, numbers = q[keep], bulk.numbers[keep]
    q[:, :2] += extent / 2
    q[:, 2] -= q[:, 2].min() - 1.0
    return Atoms(numbers=numbers, positions=q, cell=[extent, extent, q[:, 2].max() + 1.0], pbc=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zones", nargs="+", default=["110", "100", "111", "112", "310"])
    ap.add_argument("--lam", type=float, nargs="+", default=[2.5, 10.0])
    ap.add_argument("--thickness", type=float, default=20.0, help="crystal thickness along the beam [A]")
    ap.add_argument("--spread", type=float, default=21.0, help="focal spread, standard deviation [A]")
    ap.add_argument("--seed", type=int, default=3001)
    ap.add_argument("--refute-radius", type=float, default=None,
                    help="predict_checked(refute_radius=...): refuse a pixel whose neighbourhood of this radius [A] "
                    "has more than --refute-fraction of its lattice windows refuting [110]")
    ap.add_argument("--refute-fraction", type=float, default=0.3)
    ap.add_argument("--out", help="write the printed lines (markdown) here")
    args = ap.parse_args(argv)

    from segdepth.learn.validity import REASONS, predict_checked
    from segdepth.physics.noise import poisson_noise_paired
    from segdepth.physics.simulation import Microscope, image_exit_wave, simulate_exit_wave
    from segdepth.physics.structures import ParticleSpec, Structure

    start = time.perf_counter()
    extent = GPTS * SAMPLING
    lens = Microscope(defocus_spread=args.spread, defocus_samples=15)
    code = {name: c for c, name in REASONS.items()}
    lines = ["| zone | lambda | crystal | vouched for (ceo2_110) | other lattice | turned lattice | model disagreement "
             "| mean count read |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, zone in enumerate(args.zones):
        if len(zone) != 3 or not zone.isdigit():
            raise SystemExit(f"--zones: expected three digits such as 110, got {zone!r}")
        rng = np.random.default_rng([args.seed, k])
        atoms = oriented_box(tuple(int(c) for c in zone), args.thickness, extent, rng)
        none = np.zeros(0)
        structure = Structure(atoms=atoms, column_x=none, column_y=none, column_Z=none.astype(np.uint8),
                              column_count=none.astype(np.uint8),
                              spec=ParticleSpec(extent=(extent, extent), surface="flat"))
        wave = simulate_exit_wave(structure, gpts=GPTS, sampling=SAMPLING, slice_thickness=1.913)
        image = image_exit_wave(wave, 50.0, microscope=lens, binning=2)[0]
        for j, lam in enumerate(args.lam):
            noisy = poisson_noise_paired(image, lam, rng=np.random.default_rng([args.seed, k, j]))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                out = predict_checked(noisy, pixel_size=SAMPLING * 2, lam=lam, refute_radius=args.refute_radius,
                                      refute_fraction=args.refute_fraction)
            yy, xx = np.meshgrid(out.y.values, out.x.values, indexing="ij")
            inside = ((np.abs(xx - extent / 2) < extent / 2 - MARGIN - 3.0)
                      & (np.abs(yy - extent / 2) < extent / 2 - MARGIN - 3.0))
            reason = out.valid_reason.values[0][inside]
            crystal = out.crystal.values[0][inside].astype(bool)
            share = {name: float(np.mean(reason == code[name])) for name in
                     ("ceo2_110", "other_lattice", "turned_lattice", "model_disagreement")}
            lines.append(f"| [{zone}] | {lam:g} | {crystal.mean():.3f} | {share['ceo2_110']:.3f} | "
                         f"{share['other_lattice']:.3f} | {share['turned_lattice']:.3f} | "
                         f"{share['model_disagreement']:.3f} | {out.depth.values[0][inside].mean():.2f} |")
            print(lines[-1], flush=True)
    lines.append(f"\n({time.perf_counter() - start:.0f} s; {len(atoms)} atoms in the last box, thickness "
                 f"{args.thickness:g} A, overfocus 5 nm, focal spread {args.spread:g} A, seed {args.seed})")
    print(lines[-1])
    if args.out:
        from segdepth.data.store import atomic_write

        atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
