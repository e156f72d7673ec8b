"""Which simulator made the image? The same particles through other simulator choices, scored.

Run: ``python benchmarks/simulator_shift.py [--structures 6] [--spread 21] [--model PATH ...] [--kinds ...]``
(about 3 min on 2 cores; 7 with the exit-wave variants). ``--structures`` particles of the ``robust``
preset's outlines (static atoms, no vacancies, seed 77) are simulated once each (exit wave) and imaged with
the paper's nominal lens (Cs -9 um, C5 5 mm, 40 mrad aperture) at a random overfocus of 2-8 nm and a focal
spread of ``--spread`` A (standard deviation), three
ways: ``incoherent`` (intensities averaged over 15 Gaussian defocus values: this project's generator),
``quasi`` (abTEM's quasi-coherent envelope, ``abtem.CTF(focal_spread=sqrt(2) * spread)``, which many HRTEM
simulations use) and ``coherent`` (no focal spread); ``underfocus`` (``--kinds``; the incoherent lens at the same
defocus but of the other sign, 2-8 nm *under*focus: what a simulation gets whose defocus sign convention is the
opposite of abTEM's, ``../shared/PHYSICS.md``, or a microscopist who focuses the other way).
Each image gets Poisson noise at lambda 2.5 and 10
(the same noise draws for every model, and one seeded stream per particle and dose for every kind: the
kinds are compared on paired noise; since 2026-12-05, fourth session, drawn by the inverse CDF from one uniform
per pixel, :func:`segdepth.physics.noise.poisson_noise_paired`, so that a last-bit difference of the image no
longer re-draws the noise) and
every model counts the atoms at the true column centres (mean of the plain
and the 180-degree pass, as ``segdepth predict``; ``--model default`` makes both passes with the default's
weights, ``default-pair`` the second with its second model, ``DEFAULT_ROTATED_MODEL``, as ``segdepth predict``
without ``--model`` since 2026-12-05; ``FIRST+SECOND``, two model files, the second with ``SECOND``).
The dose is passed to ``predict`` (as ``segdepth predict --lambda``): above the cards' dose-matching target the
images are read at that target (``--no-dose-matching``: not). Prints the fraction of columns counted exactly and
how honest the probabilities at the columns are (mean
confidence, column ECE, coverage of the 90 % count sets: :func:`segdepth.learn.metrics.column_calibration`).
Before the paired noise the counts moved between runs of the same command (up to 4.5 points at lambda 10):
the simulated images differ in the last bits between processes, and
numpy's Poisson sampler switches algorithm at a mean of 10 (the vacuum at lambda 10), taking another number of
draws, so the rest of the image's noise changed.

Four more kinds change the exit wave instead of the lens (imaged the ``incoherent`` way): ``kirkland``
(Kirkland's atomic potentials instead of Lobato's), ``thin_slices`` (two slices per atomic plane, 0.957 A,
instead of one), ``finite`` (abTEM's finite projection of each atom into the slices) and ``phonons8``
(vibrating atoms: 8 frozen-phonon configurations with the generator's rms displacements,
``segdepth.physics.simulation.PHONON_SIGMAS``; the training sets use 2, the phonon shift test 4). Three change the
particle, not the simulator (imaged the ``incoherent`` way, the same columns and counts): ``entrance`` / ``exit``
(every column's atoms flush with the entrance or the exit surface of the slab instead of centred on its
mid-plane: a particle lying on a support, seen from either side) and ``random_z`` (each column at a random
height: a rough 3D particle); ``ParticleSpec.stacking``.

Other microscopes (since 2026-12-06, tenth session; the exit wave and lens the ``incoherent`` way otherwise):
``aperture30`` / ``aperture20`` (an objective aperture of 30 / 20 mrad instead of 40), ``no_aperture`` (none:
what the lens scatters beyond 40 mrad stays in the image), and ``kv200`` / ``kv120`` / ``kv80`` (the whole
simulation, exit wave and lens, at 200 / 120 / 80 kV with the same Cs, C5, aperture angle, overfocus and focal
spread: another instrument, or the same one at another high tension; ``make microscope-shift``). Every training
set of this project is at 300 kV with a 40 mrad aperture. ``tilt5`` / ``tilt10``: the specimen tilted off the
zone axis by 5 / 10 mrad about an in-plane axis at a random azimuth (per particle; the training sets draw +-2 mrad
about x and y, the shift test +-3), a new exit wave through the tilted particle (``tilt_structure``).
``carbon2`` / ``carbon5``: the particle on an amorphous carbon film 2 / 5 nm thick across the whole field, on the
beam's exit side (``segdepth.physics.structures.on_amorphous_support``: random carbon atoms at 2.0 g/cm^3, none
closer than 1.3 A: the support of most real specimens;
every training image is a particle in vacuum). ``pixel0.0265`` / ``pixel0.106`` / ``pixel0.212``: the same image
delivered at another pixel size (the simulation binned 1, 4 or 8 times instead of 2) with the same electrons per
A^2, read at that pixel size (``predict`` resamples every input to the model's 0.212 A).
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import replace

import numpy as np

LENS_KINDS = ("incoherent", "quasi", "coherent", "underfocus")
#: Exit-wave variants (imaged with the incoherent lens): keyword arguments of ``simulate_exit_wave``.
WAVE_KINDS = {"kirkland": {"parametrization": "kirkland"}, "thin_slices": {"slice_thickness": 1.913 / 2},
              "finite": {"projection": "finite"}, "phonons8": {"phonons": 8, "phonon_seed": 5}}
#: Structure variants (imaged with the incoherent lens): the same columns and counts, each column's atoms at
#: another height along the beam (``ParticleSpec.stacking``; our generator centres them on the mid-plane).
STRUCTURE_KINDS = {"entrance": "entrance", "exit": "exit", "random_z": "random"}
#: Objective-aperture variants [mrad] (the incoherent lens otherwise; 1000 mrad: beyond the simulation grid).
APERTURE_KINDS = {"aperture30": 30.0, "aperture20": 20.0, "no_aperture": 1000.0}
#: Beam-energy variants [eV]: exit wave and lens at that energy.
ENERGY_KINDS = {"kv200": 200e3, "kv120": 120e3, "kv80": 80e3}
#: Delivered pixel sizes: the binning of the 0.0265 A simulation (2: the 0.053 A of every other kind), the same
#: electrons per A^2 (lambda is per 0.053 A pixel, scaled to the delivered pixel).
PIXEL_KINDS = {"pixel0.0265": 1, "pixel0.106": 4, "pixel0.212": 8}
#: Amorphous carbon supports [nm of thickness] under the particle.
SUPPORT_KINDS = {"carbon2": 2.0, "carbon5": 5.0}
#: Specimen-tilt variants [mrad] (magnitude; the azimuth drawn per particle).
TILT_KINDS = {"tilt5": 5.0, "tilt10": 10.0}
KINDS = (LENS_KINDS + tuple(WAVE_KINDS) + tuple(STRUCTURE_KINDS) + tuple(APERTURE_KINDS) + tuple(ENERGY_KINDS)
         + tuple(TILT_KINDS) + tuple(PIXEL_KINDS) + tuple(SUPPORT_KINDS))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--structures", type=int, default=6)
    ap.add_argument("--seed", type=int, default=77, help="seed of the particles (77: the committed results)")
    ap.add_argument("--spread", type=float, default=21.0, help="focal spread, standard deviation [A]")
    ap.add_argument("--lam", type=float, nargs="+", default=[2.5, 10.0])
    ap.add_argument("--no-dose-matching", action="store_true",
                    help="do not read images above the cards' dose-matching target at that target (the dose is "
                    "passed to predict as segdepth predict --lambda does)")
    ap.add_argument("--model", nargs="+", default=["default"],
                    help="model files ('default': the shipped default in both passes; 'default-pair': the default "
                    "and its second model in the 180-degree pass; 'FIRST+SECOND': SECOND makes FIRST's 180-degree "
                    "pass)")
    ap.add_argument("--kinds", nargs="+", default=list(LENS_KINDS[:3]), choices=KINDS, help="simulator variants")
    args = ap.parse_args(argv)
    kinds = tuple(dict.fromkeys(["incoherent", *args.kinds]))

    from segdepth.learn.inference import load_default_model, predict
    from segdepth.learn.metrics import column_calibration, column_counts, column_probabilities
    from segdepth.learn.modelio import load_model
    from segdepth.physics.generate import PRESETS
    from segdepth.physics.noise import poisson_noise_paired
    from segdepth.physics.simulation import Microscope, image_exit_wave, simulate_exit_wave, tilt_structure
    from segdepth.physics.structures import build_particle, on_amorphous_support, random_particle_spec

    start = time.perf_counter()
    def pair(m):  # (model, card) of the plain pass, (model, card) of the 180-degree pass
        if m == "default-pair":
            return load_default_model(), load_default_model(rotated=True)
        if "+" in m:
            first, second = m.split("+", 1)
            return load_model(first), load_model(second)
        first = load_default_model() if m == "default" else load_model(m)
        return first, first

    models = {m: pair(m) for m in args.model}
    params = PRESETS["robust"]
    lenses = {"incoherent": Microscope(defocus_spread=args.spread, defocus_samples=15),
              "quasi": Microscope(defocus_spread=args.spread, coherence="quasi"),
              "coherent": Microscope(defocus_spread=0.0, defocus_samples=1)}
    hits = {(m, k, lam): [0, 0] for m in models for k in kinds for lam in args.lam}
    at_columns = {key: ([], []) for key in hits}  # probabilities at the column centres, true counts
    for i in range(args.structures):
        rng = np.random.default_rng([args.seed, i])
        spec = random_particle_spec((params.extent, params.extent), rng=rng, surfaces=params.surfaces,
                                    thickness_range=params.thickness_range, vacuum=params.vacuum, vacancy_max=0.0,
                                    wedge_range=params.wedge_range)
        state = rng.bit_generator.state
        structure = build_particle(spec, rng=rng)
        wave = simulate_exit_wave(structure, gpts=params.gpts, sampling=params.sampling,
                                  slice_thickness=params.slice_thickness)
        overfocus = float(rng.uniform(20.0, 80.0))
        images = {k: image_exit_wave(wave, -overfocus if k == "underfocus" else overfocus,
                                     microscope=lenses["incoherent" if k == "underfocus" else k],
                                     binning=params.binning)[0]
                  for k in kinds if k in LENS_KINDS}
        for kind in (k for k in kinds if k in WAVE_KINDS):
            options = {"slice_thickness": params.slice_thickness, **WAVE_KINDS[kind]}
            other = simulate_exit_wave(structure, gpts=params.gpts, sampling=params.sampling, **options)
            images[kind] = image_exit_wave(other, overfocus, microscope=lenses["incoherent"], binning=params.binning)[0]
        for kind in (k for k in kinds if k in STRUCTURE_KINDS):
            again = np.random.default_rng()
            again.bit_generator.state = state  # the same draws: the same counts and vacancies
            other = build_particle(replace(spec, stacking=STRUCTURE_KINDS[kind]), rng=again)
            assert np.array_equal(other.column_count, structure.column_count)
            other_wave = simulate_exit_wave(other, gpts=params.gpts, sampling=params.sampling,
                                            slice_thickness=params.slice_thickness)
            images[kind] = image_exit_wave(other_wave, overfocus, microscope=lenses["incoherent"],
                                           binning=params.binning)[0]
        for kind in (k for k in kinds if k in APERTURE_KINDS):
            lens = replace(lenses["incoherent"], semiangle_cutoff=APERTURE_KINDS[kind])
            images[kind] = image_exit_wave(wave, overfocus, microscope=lens, binning=params.binning)[0]
        azimuth = float(np.random.default_rng([args.seed, i, 5]).uniform(0, 2 * np.pi))
        for kind in (k for k in kinds if k in TILT_KINDS):
            tilt = TILT_KINDS[kind] * np.array([np.cos(azimuth), np.sin(azimuth)])
            other_wave = simulate_exit_wave(tilt_structure(structure, tuple(tilt)), gpts=params.gpts,
                                            sampling=params.sampling, slice_thickness=params.slice_thickness)
            images[kind] = image_exit_wave(other_wave, overfocus, microscope=lenses["incoherent"],
                                           binning=params.binning)[0]
        for kind in (k for k in kinds if k in SUPPORT_KINDS):
            supported = on_amorphous_support(structure, 10.0 * SUPPORT_KINDS[kind],
                                             rng=np.random.default_rng([args.seed, i, 7]))
            other_wave = simulate_exit_wave(supported, gpts=params.gpts, sampling=params.sampling,
                                            slice_thickness=params.slice_thickness)
            images[kind] = image_exit_wave(other_wave, overfocus, microscope=lenses["incoherent"],
                                           binning=params.binning)[0]
        for kind in (k for k in kinds if k in PIXEL_KINDS):
            images[kind] = image_exit_wave(wave, overfocus, microscope=lenses["incoherent"],
                                           binning=PIXEL_KINDS[kind])[0]
        for kind in (k for k in kinds if k in ENERGY_KINDS):
            energy = ENERGY_KINDS[kind]
            other_wave = simulate_exit_wave(structure, gpts=params.gpts, sampling=params.sampling, energy=energy,
                                            slice_thickness=params.slice_thickness)
            images[kind] = image_exit_wave(other_wave, overfocus, microscope=replace(lenses["incoherent"],
                                           energy=energy), binning=params.binning)[0]
        rms = ", ".join(f"{k} {np.sqrt(np.mean((im - images['incoherent']) ** 2)):.4f}"
                        for k, im in images.items() if k != "incoherent" and im.shape == images["incoherent"].shape)
        print(f"structure {i} ({spec.surface}, {structure.n_columns} columns, overfocus {overfocus:.0f} A): "
              f"contrast {images['incoherent'].std():.3f}; rms difference from incoherent: {rms}", flush=True)
        for kind, image in images.items():
            for j, lam in enumerate(args.lam):  # one noise stream per (particle, dose), the same for every kind
                stream = [1, i, j] if args.seed == 77 else [1, args.seed, i, j]
                scale = (PIXEL_KINDS[kind] / params.binning) ** 2 if kind in PIXEL_KINDS else 1.0  # pixel area
                noisy = poisson_noise_paired(image, lam * scale, rng=np.random.default_rng(stream))
                for name, ((model, card), (second, second_card)) in models.items():
                    options = {"pixel_size": params.pixel_size * np.sqrt(scale), "return_probabilities": True,
                               "lam": lam * scale, "dose_matching": not args.no_dose_matching}
                    with warnings.catch_warnings():  # doses outside the training range are the point here
                        warnings.simplefilter("ignore", UserWarning)
                        plain = predict(noisy, model, card, **options)
                        turned = predict(np.ascontiguousarray(noisy[::-1, ::-1]), second, second_card, **options)
                    prob = 0.5 * (plain.probability.values[0] + turned.probability.values[0][:, ::-1, ::-1])
                    counts = column_counts(prob.argmax(0), structure.column_x, structure.column_y,
                                           plain.x.values, plain.y.values)
                    h = hits[name, kind, lam]
                    h[0] += int((counts == structure.column_count).sum())
                    h[1] += structure.n_columns
                    at_columns[name, kind, lam][0].append(column_probabilities(
                        prob, structure.column_x, structure.column_y, plain.x.values, plain.y.values))
                    at_columns[name, kind, lam][1].append(np.asarray(structure.column_count))
    for (name, kind, lam), (exact, n) in hits.items():
        what = (f"{kind} focal spread" if kind in LENS_KINDS else f"{kind} exit wave" if kind in WAVE_KINDS
                else f"{kind} stacking" if kind in STRUCTURE_KINDS else f"{kind} specimen" if kind in TILT_KINDS
                else f"{kind} A pixels" if kind in PIXEL_KINDS else f"{kind} support" if kind in SUPPORT_KINDS
                else f"{kind} microscope")
        cal = column_calibration(*(np.concatenate(v) for v in at_columns[name, kind, lam]))
        print(f"{name}: {what}, lambda {lam:g}: exact {exact / n:.3f} of {n} columns; confidence at the columns "
              f"{cal['confidence']:.3f}, column ECE {cal['ece']:.3f}, 90 % count sets hold the truth in "
              f"{cal['set_coverage']:.3f} ({cal['set_size']:.2f} counts)")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
