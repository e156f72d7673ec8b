"""Particles our generator cannot make: whole 3D CeO2 polyhedra seen along [110], counted by the shipped default.

Run: ``python benchmarks/wulff_particles.py [--particles 6] [--lam 2.5 10] [--out data/results/wulff_particles.md]``
(about 3 min on 2 cores). Our generator (:mod:`segdepth.physics.structures`) builds islands of [110] columns whose
lengths follow an outline and a wedge, centred on one mid-plane. A microscopist's particle is a 3D polyhedron: here
each particle is cut from bulk fluorite CeO2 (``ase.spacegroup.crystal``, a = 5.411 A) by its {111} planes at a
distance ``r111`` and its {100} planes at ``r100`` from a centre placed at random inside the unit cell (an
octahedron truncated at its vertices, the shape CeO2 nanoparticles take; Wulff), then turned so that [110] is the
beam, [001] along y (the training orientation), and, for every other particle, cut flat across the beam below its
centre (a particle sitting on a support, its columns flush with one surface). Every column's length follows from the
3D shape (1 atom at the edges, up to 10 in the middle; a particle with a longer column is shrunk), its atoms at the
heights the shape gives them. The particle is put in a 54 A field (2048 x 2048 at 0.0265 A, binned 2x to 0.053 A),
imaged with the paper's nominal lens at 5 nm overfocus with a focal spread of sigma 21 A (the incoherent average
over 15 defocus values), Poisson noise at each ``--lam`` (paired noise, one stream per particle and dose) and read by
``segdepth predict``'s default pair (the default and its second model in the 180-degree pass, the dose given, the
frame upright). ``--phonons N``: the atoms vibrate (N frozen-phonon configurations, the generator's rms
displacements). Printed and written: the fraction of columns counted exactly and within one atom, by true count.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

EXTENT_GPTS = 2048
OVERFOCUS = 50.0  # A


def polyhedron(r111: float, r100: float, centre: np.ndarray, truncate: float | None):
    """Atoms (numbers, positions in the [110]-beam frame [A], relative to the particle centre) of a {111} / {100}
    polyhedron of fluorite CeO2; ``truncate``: also cut away everything more than this far below the centre along the
    beam (a flat base)."""
    from ase.spacegroup import crystal

    from segdepth.physics.structures import LATTICE_CONSTANT

    a = LATTICE_CONSTANT
    n = int(np.ceil(max(r111 * np.sqrt(3), r100) / a)) + 2
    bulk = crystal(["Ce", "O"], basis=[(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=225, cellpar=[a, a, a, 90, 90, 90])
    bulk = bulk.repeat((2 * n, 2 * n, 2 * n))
    p = bulk.get_positions() - n * a - centre  # cubic frame, relative to the centre
    inside = np.all(np.abs(p) <= r100 + 1e-6, axis=1)
    for signs in ((1, 1, 1), (1, 1, -1), (1, -1, 1), (-1, 1, 1)):
        inside &= np.abs(p @ np.asarray(signs, float)) / np.sqrt(3) <= r111 + 1e-6
    p, numbers = p[inside], bulk.numbers[inside]
    # into the beam frame of segdepth.physics.structures: x = [1-10], y = [001], z = [110]
    beam = np.stack([(p[:, 0] - p[:, 1]) / np.sqrt(2), p[:, 2], (p[:, 0] + p[:, 1]) / np.sqrt(2)], axis=1)
    if truncate is not None:
        keep = beam[:, 2] >= -truncate
        beam, numbers = beam[keep], numbers[keep]
    return numbers, beam


def as_structure(numbers, beam, extent: float):
    """A :class:`segdepth.physics.structures.Structure` of the particle in the middle of an ``extent`` field."""
    from ase import Atoms

    from segdepth.physics.structures import ParticleSpec, Structure

    pos = beam.copy()
    pos[:, 0] += extent / 2
    pos[:, 1] += extent / 2
    pos[:, 2] -= pos[:, 2].min() - 1.0
    keys, column, count = np.unique(np.round(pos[:, :2], 2), axis=0, return_inverse=True, return_counts=True)
    column = column.ravel()
    z = np.array([numbers[column == c][0] for c in range(len(keys))])
    if any(len(set(numbers[column == c])) != 1 for c in range(len(keys))):
        raise RuntimeError("a projected column holds two elements: the particle is not seen along [110]")
    atoms = Atoms(numbers=numbers, positions=pos, cell=[extent, extent, pos[:, 2].max() + 1.0], pbc=True)
    spec = ParticleSpec(extent=(extent, extent), surface="faceted", particles=((extent / 2, extent / 2, 1) +
                                                                                (1.0,) * 8,))
    return Structure(atoms=atoms, column_x=keys[:, 0].astype(float), column_y=keys[:, 1].astype(float),
                     column_Z=z.astype(np.uint8), column_count=count.astype(np.uint8), spec=spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=6)
    ap.add_argument("--lam", type=float, nargs="+", default=[2.5, 10.0])
    ap.add_argument("--spread", type=float, default=21.0, help="focal spread, standard deviation [A]")
    ap.add_argument("--seed", type=int, default=2061)
    ap.add_argument("--turn", default=None,
                    help="turn every particle in the image plane by this many degrees ('random': uniform 0-180 per "
                    "particle) and read it as segdepth predict does, the lattice's orientation measured and turned "
                    "back (orientation 'auto'); default: upright, read as given")
    ap.add_argument("--checked", action="store_true",
                    help="read through segdepth predict's validity check (predict_checked: the vacuum mask, the "
                    "validity map, the regime and coherence checks) and report the columns it vouches for")
    ap.add_argument("--phonons", type=int, default=0,
                    help="frozen-phonon configurations (0: static atoms; the generator's rms displacements)")
    ap.add_argument("--max-atoms", type=int, default=None,
                    help="longest column allowed (default: the labels' 10); more makes columns the models never saw")
    ap.add_argument("--radius", type=float, nargs=2, default=[9.0, 14.0], metavar=("LO", "HI"),
                    help="range of the {111} planes' distance from the centre [A] (shrunk until the columns fit)")
    ap.add_argument("--gpts", type=int, default=EXTENT_GPTS,
                    help="simulation grid (at 0.0265 A; 2048: a 54 A field, 4096: 108 A for larger particles)")
    ap.add_argument("--refute-radius", type=float, default=None,
                    help="with --checked: predict_checked(refute_radius=...) (default: its default)")
    ap.add_argument("--out", help="write the table (markdown) here")
    args = ap.parse_args(argv)

    from segdepth.constants import MAX_ATOMS
    from segdepth.learn.inference import load_default_model, predict
    from segdepth.learn.metrics import column_counts
    from segdepth.learn.validity import predict_checked
    from segdepth.physics.noise import poisson_noise_paired
    from segdepth.physics.simulation import Microscope, image_exit_wave, simulate_exit_wave

    start = time.perf_counter()
    sampling, binning = 0.0265, 2
    extent = args.gpts * sampling
    (model, card), (second, second_card) = load_default_model(), load_default_model(rotated=True)
    lens = Microscope(defocus_spread=args.spread, defocus_samples=15)
    rows = {lam: [] for lam in args.lam}  # (true counts, counts read) per particle
    checked = []  # with --checked: (columns vouched for, underfocus score, quasi score, warnings) per image
    lines = []
    for i in range(args.particles):
        rng = np.random.default_rng([args.seed, i])
        r111 = float(rng.uniform(*args.radius))
        f100 = float(rng.uniform(0.6, 1.0))
        centre = rng.uniform(0.0, 5.411, 3)
        truncate = float(rng.uniform(0.0, 4.0)) if i % 2 else None
        turn = (float(rng.uniform(0.0, 180.0)) if args.turn == "random" else float(args.turn)) if args.turn else 0.0
        c, s_ = np.cos(np.radians(turn)), np.sin(np.radians(turn))
        while True:  # shrink until no column is longer than the labels go
            numbers, beam = polyhedron(r111, f100 * np.sqrt(3) * r111, centre, truncate)
            beam = np.column_stack([c * beam[:, 0] - s_ * beam[:, 1], s_ * beam[:, 0] + c * beam[:, 1], beam[:, 2]])
            structure = as_structure(numbers, beam, extent)
            longest = MAX_ATOMS if args.max_atoms is None else args.max_atoms
            if structure.column_count.max() <= longest and np.ptp(beam[:, :2], axis=0).max() < extent - 20.0:
                break
            r111 -= 0.5
        wave = simulate_exit_wave(structure, gpts=args.gpts, sampling=sampling, slice_thickness=1.913,
                                  phonons=args.phonons, phonon_seed=i)
        image = image_exit_wave(wave, OVERFOCUS, microscope=lens, binning=binning)[0]
        counts = structure.column_count
        shape = (f"r111 {r111:.1f} A, r100 {f100 * np.sqrt(3) * r111:.1f} A"
                 + (f", turned {turn:.0f} deg" if turn else "")
                 + (f", base {truncate:.1f} A below the centre" if truncate is not None else ""))
        lines.append(f"particle {i}: {shape}; {structure.n_columns} columns of 1-{counts.max()} atoms, "
                     f"{len(structure.atoms)} atoms")
        print(lines[-1], flush=True)
        for j, lam in enumerate(args.lam):
            noisy = poisson_noise_paired(image, lam, rng=np.random.default_rng([args.seed, i, j]))
            options = {"pixel_size": sampling * binning, "return_probabilities": True, "lam": lam,
                       "orientation": "auto" if args.turn else None}
            if args.checked:
                options.pop("return_probabilities")
                with warnings.catch_warnings(record=True) as said:
                    warnings.simplefilter("always", UserWarning)
                    if args.refute_radius is not None:
                        options["refute_radius"] = args.refute_radius
                    out = predict_checked(noisy, **options)
                at = (structure.column_x, structure.column_y, out.x.values, out.y.values)
                read = column_counts(out.depth.values[0], *at)
                valid = column_counts(out.valid_reason.values[0], *at) == 0  # vouched for as a CeO2 [110] count
                low, high = (column_counts(out[v].values[0], *at) for v in ("depth_low", "depth_high"))
                held = (low <= counts) & (counts <= high)  # the count set holds the true count
                checked.append((valid, float(out.underfocus_score[0]), float(out.quasi_score[0]), len(said), held,
                                high - low + 1, np.asarray(counts) > MAX_ATOMS))
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    plain = predict(noisy, model, card, **options)
                    turned = predict(np.ascontiguousarray(noisy[::-1, ::-1]), second, second_card, **options)
                prob = 0.5 * (plain.probability.values[0] + turned.probability.values[0][:, ::-1, ::-1])
                read = column_counts(prob.argmax(0), structure.column_x, structure.column_y, plain.x.values,
                                     plain.y.values)
            rows[lam].append((np.asarray(counts, int), np.asarray(read, int)))
    beyond = any((t > MAX_ATOMS).any() for pairs in rows.values() for t, _ in pairs)  # columns the labels lack
    table = ["| lambda | columns | exact | within one | exact, 1-3 atoms | exact, 4-6 | exact, 7-10 | "
             + ("beyond 10: read 10 | beyond 10: mean read | " if beyond else "") + "mean read - true |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if beyond else "")]
    for lam, pairs in rows.items():
        true = np.concatenate([t for t, _ in pairs])
        read = np.concatenate([r for _, r in pairs])
        cells = [f"{np.mean(read[m] == true[m]):.3f} ({m.sum()})" if m.any() else "-"
                 for m in (true <= 3, (true >= 4) & (true <= 6), (true >= 7) & (true <= MAX_ATOMS))]
        if beyond:
            over = true > MAX_ATOMS
            cells += ([f"{np.mean(read[over] == MAX_ATOMS):.3f} ({over.sum()})", f"{np.mean(read[over]):.2f}"]
                      if over.any() else ["-", "-"])
        within = np.mean(np.abs(read - true) <= 1)
        table.append(f"| {lam:g} | {true.size} | {np.mean(read == true):.3f} | {within:.3f} | {' | '.join(cells)} | "
                     f"{np.mean(read - true):+.2f} |")
    if checked:
        vouched = np.concatenate([c[0] for c in checked])
        table += ["", f"validity check: {vouched.mean():.3f} of the columns vouched for as CeO2 [110] counts; "
                  f"underfocus scores {min(c[1] for c in checked):.3f}-{max(c[1] for c in checked):.3f}, quasi "
                  f"scores {min(c[2] for c in checked):.3f}-{max(c[2] for c in checked):.3f}; "
                  f"{sum(c[3] > 0 for c in checked)} of {len(checked)} images warned; the count sets (depth_low-"
                  f"depth_high) hold the true count in {np.concatenate([c[4] for c in checked]).mean():.3f} of the "
                  f"columns, {np.concatenate([c[5] for c in checked]).mean():.2f} counts wide on average"]
        over = np.concatenate([c[6] for c in checked])
        if over.any():
            table[-1] += (f"; of the {over.sum()} column-images beyond {MAX_ATOMS} atoms (the labels' end) "
                          f"{vouched[over].mean():.3f} vouched for, and of those within it "
                          f"{vouched[~over].mean():.3f}")
    text = "\n".join(lines + [""] + table + ["", f"({time.perf_counter() - start:.0f} s; seed {args.seed}, focal "
                                             f"spread {args.spread:g} A, overfocus {OVERFOCUS / 10:g} nm, "
                                             + (f"{args.phonons} frozen-phonon configurations" if args.phonons
                                                else "static atoms")
                                             + (f", turned {args.turn} deg, orientation measured)" if args.turn
                                                else ")")])
    print("\n".join(table[2:]))  # (with --checked: the counts after the vacuum mask, as segdepth predict writes them)
    print(text.splitlines()[-1])
    if args.out:
        from segdepth.data.store import atomic_write

        atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(text + "\n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
