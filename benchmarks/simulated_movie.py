"""A simulated in-situ movie with a known answer, run through notebook 06's path and scored (issue 12).

Run: ``python benchmarks/simulated_movie.py [--frames 24] [--dose 4.1] [--seed 3]`` (about 2 min on 2 cores).
One CeO2 [110] particle (``stepped`` outline, 4-8 atoms thick, 40.7 A field) loses one O atom from three
surface O columns under the beam: column A at frame F/3, column B at 2F/3, column C at both. The frames are
imaged with the nominal lens at 5 nm overfocus, drift 0.15 / 0.1 A per frame with 0.1 A jitter, resampled
to the real movie's 0.2006 A pixels and given Poisson noise at its dose (4.1 electrons per pixel by
default, what notebook 06 estimates for the real movie; ``segdepth.physics.simmovie``). Then exactly the real
movie's path (``segdepth.apps.moviescore.run_movie_path``: validity-checked prediction of every frame with the
default model, alignment, the 5-frame running averages for the CeO2 region, columns, tracking, HMM
smoothing) and the score (``segdepth.apps.moviescore.score_simulated_movie``). Writes ``--out`` (netCDF: the
score, the truth, the tracked and smoothed counts, the drift), a markdown table beside it and a figure
(the changing columns and one unchanged O column); prints the figures and the wall time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_DELAYS = ("smoothed_50", "smoothed_90", "filtered_50", "filtered_90")


def _delay_text(score, name: str, k: int, never: int) -> str:
    """A delay as the table shows it: the frames when the change was seen, else why not."""
    d = int(score[f"delay_{name}"][k])
    if d == never:
        return "never"
    return str(d) if bool(score[f"seen_{name}"][k]) else f"({d}: not seen)"


def _seen_summary(score, name: str, never: int) -> str:
    seen = [int(score[f"delay_{name}"][k]) for k in range(score.sizes["change"]) if bool(score[f"seen_{name}"][k])]
    return f"{len(seen)} of {score.sizes['change']}" + (f", after {', '.join(map(str, sorted(seen)))}" if seen else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--dose", type=float, default=None,
                    help="electrons per 0.2006 A pixel (default: the real movie's, simmovie.REAL_MOVIE_DOSE)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--gpts", type=int, default=1536, help="multislice grid (field gpts * 0.0265 A)")
    ap.add_argument("--average", type=int, default=5, help="aligned frames in the running averages (region)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--out", default=str(ROOT / "data/results/simulated_movie.nc"))
    ap.add_argument("--figure", default=str(ROOT / "figures/simulated_movie.png"))
    args = ap.parse_args(argv)
    if args.frames < 6:
        ap.error("--frames must be >= 6")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from segdepth.apps.moviescore import NEVER, run_simulated_movie
    from segdepth.apps.plotting import save_figure
    from segdepth.data.calibration import estimate_dose
    from segdepth.data.store import write_netcdf_atomic
    from segdepth.learn.inference import load_default_model
    from segdepth.physics.simmovie import REAL_MOVIE_DOSE, simulate_movie, surface_columns
    from segdepth.physics.simulation import PAPER_SAMPLING
    from segdepth.physics.structures import Z_O, build_particle, random_particle_spec

    torch.set_num_threads(args.threads)
    dose = REAL_MOVIE_DOSE if args.dose is None else args.dose
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    extent = args.gpts * PAPER_SAMPLING
    spec = random_particle_spec((extent, extent), rng=rng, surfaces=("stepped",), thickness_range=(4, 8),
                                vacuum=12.0, wedge_range=(0.0, 4.0))
    structure = build_particle(spec, rng=rng)
    a, b, c = surface_columns(structure, n=3, rng=rng)
    n, f1, f2 = args.frames, args.frames // 3, 2 * args.frames // 3
    full = {j: int(structure.column_count[j]) for j in (a, b, c)}
    frames = np.arange(n)
    schedule = {
        a: np.where(frames >= f1, full[a] - 1, full[a]),
        b: np.where(frames >= f2, full[b] - 1, full[b]),
        c: full[c] - (frames >= f1) - (frames >= f2),
    }
    movie = simulate_movie(structure, schedule, gpts=args.gpts, dose=dose, rng=rng)
    t_sim = time.perf_counter() - start
    model, card = load_default_model()
    score, result = run_simulated_movie(movie, model, card, average=args.average,
                                        rotated=load_default_model(rotated=True))  # as segdepth predict
    t_path = time.perf_counter() - start - t_sim
    dose_estimated = float(estimate_dose(movie["image"].values))
    tracked, smoothed = result["tracked"], result["smoothed"]

    print(f"{structure.n_columns} true columns ({int(score.n_true_columns)} with atoms), "
          f"{int(score.n_found_columns)} found; dose {dose:g} (estimate_dose: {dose_estimated:.2f}); "
          f"simulation {t_sim:.0f} s, path {t_path:.0f} s")
    print(f"drift error (largest over frames and axes) {float(score.drift_error):.3f} A")
    names = ("found_fraction", "found_precision", "position_rms", "element_accuracy", "element_unknown_fraction",
             "frame_exact", "smoothed_exact", "changing_frame_exact", "changing_smoothed_exact", "expected_bias",
             "changing_expected_bias", "frame_set_coverage", "frame_set_width", "smoothed_set_coverage",
             "smoothed_set_width")
    for name in names:
        print(f"{name}: {float(score[name]):.3f}")
    lines = ["| true column | change frame | count | smoothed > 0.5 | smoothed > 0.9 | filtered > 0.5 | filtered > 0.9 "
             "| smoothed step (bias-blind) | step of expected count | frame sd | frames each side to see the step "
             "(2 sd) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k in range(score.sizes["change"]):
        row = [str(int(score.true_column[k])), str(int(score.change_frame[k])),
               f"{int(score.old_count[k])} -> {int(score.new_count[k])}"]
        row += [_delay_text(score, name, k, NEVER) for name in _DELAYS]
        row += ["never" if int(score.step_delay[k]) == NEVER else str(int(score.step_delay[k]))]
        resolve = int(score.frames_to_resolve[k])
        row += [f"{float(score.step[k]):+.2f}", f"{float(score.frame_sd[k]):.2f}",
                "never (wrong sign)" if resolve == NEVER else str(resolve)]
        print("change:", " | ".join(row))
        lines.append("| " + " | ".join(row) + " |")
    false = ~np.isin(np.arange(tracked.sizes["column"]), score["match"].values)
    if false.any():
        truth_xy = np.column_stack([movie["column_y"].values, movie["column_x"].values])
        found_xy = np.column_stack([tracked["reference_y"].values, tracked["reference_x"].values])[false]
        gap = np.linalg.norm(found_xy[:, None] - truth_xy[None], axis=-1).min(axis=1)
        print(f"{int(false.sum())} found columns match no true column: nearest true column "
              f"{np.median(gap):.2f} A away (median), mean expected count "
              f"{np.nanmean(tracked['expected_count'].values[:, false]):.2f}")
    seen = {name: _seen_summary(score, name, NEVER) for name in _DELAYS}
    steps = [int(v) for v in score.step_delay.values if v != NEVER]
    seen["step"] = f"{len(steps)} of {score.sizes['change']}" + (f", at {', '.join(map(str, steps))}" if steps else "")
    for name, text in seen.items():
        print(f"changes seen, {name.replace('_', ' > 0.')}: {text}")

    out = score.assign(
        truth_count=(("frame", "true_col"), movie["column_count"].values),
        truth_changing=("true_col", movie["changing"].values.astype(np.uint8)),
        truth_Z=("true_col", movie["column_Z"].values),
        tracked_expected_count=(("frame", "column"), tracked["expected_count"].values),
        tracked_count_std=(("frame", "column"), tracked["count_std"].values),
        tracked_count=(("frame", "column"), tracked["count"].values),
        tracked_probability=tracked["probability"].transpose("frame", "column", "depth_class").astype(np.float32)
        .drop_vars(list(tracked["probability"].coords)),
        smoothed_count=(("frame", "column"), smoothed["count"].values),
        found_y=("column", tracked["reference_y"].values, {"units": "A"}),
        found_x=("column", tracked["reference_x"].values, {"units": "A"}),
        found_element=("column", tracked["element"].values.astype(str)),
        found_matched=("column", np.isin(np.arange(tracked.sizes["column"]), score["match"].values).astype(np.uint8)),
        drift_true=(("frame", "axis"), movie["drift"].values),
        drift_measured=(("frame", "axis"), result["alignment"]["drift"].values),
    ).assign_attrs(dose=dose, dose_estimated=dose_estimated, seed=args.seed, frames=n, gpts=args.gpts,
                   average=args.average, pixel_size=float(movie.attrs["pixel_size"]), simulation_s=t_sim,
                   path_s=t_path)
    write_netcdf_atomic(out, args.out)
    md = Path(args.out).with_suffix(".md")
    head = [
        f"Simulated movie (`benchmarks/simulated_movie.py --frames {n} --dose {dose:g} --seed {args.seed}`; "
        f"simulation {t_sim:.0f} s, path {t_path:.0f} s on {args.threads} threads): {int(score.n_true_columns)} "
        f"true columns, {int(score.n_found_columns)} found; found {float(score.found_fraction):.3f} of the true "
        f"columns, {float(score.found_precision):.3f} of the found ones are true (rms position error "
        f"{float(score.position_rms):.2f} A); Ce/O named right {float(score.element_accuracy):.3f} (unknown "
        f"{float(score.element_unknown_fraction):.3f}); drift error {float(score.drift_error):.3f} A.",
        "",
        f"Exact count, all matched columns: per frame {float(score.frame_exact):.3f}, HMM smoothed "
        f"{float(score.smoothed_exact):.3f} (mean expected-count bias {float(score.expected_bias):+.2f} atoms); "
        f"the changing O columns: per frame {float(score.changing_frame_exact):.3f}, smoothed "
        f"{float(score.changing_smoothed_exact):.3f} (bias {float(score.changing_expected_bias):+.2f}). The "
        f"per-frame 90 % count sets hold the true count in {float(score.frame_set_coverage):.3f} of the matched "
        f"columns and frames ({float(score.frame_set_width):.2f} counts wide on average); the HMM posterior's "
        f"sets (same probability mass, {float(tracked['count_low'].attrs.get('set_mass', 0.9)):g}) in "
        f"{float(score.smoothed_set_coverage):.3f} ({float(score.smoothed_set_width):.2f} counts wide).",
        "",
        "One-atom changes *seen* (the posterior held the old count above the threshold before, then switched to "
        "the new one at the change or later, the smoothed one at most 2 frames early), with their delays in "
        f"frames: smoothed (offline) > 0.5: {seen['smoothed_50']}; > 0.9: {seen['smoothed_90']}; filtered "
        f"(online, causal) > 0.5: {seen['filtered_50']}; > 0.9: {seen['filtered_90']}. A one-atom step of the "
        f"smoothed count within the column's segment, whatever its absolute count: {seen['step']} frames from "
        "the change.",
        "",
        "Delays [frames] from the change until the posterior of the new count exceeds 0.5 / 0.9 "
        "(`frames_to_detect_change`; smoothed delays are negative when the step comes early). \"(d: not "
        "seen)\": the posterior did not switch from the old count at the change (it was on the new count "
        "before, or switched more than 2 frames early, or never held the old count). The step of the "
        "per-frame expected count across the change, its frame-to-frame spread and the frames needed on each "
        "side to see that step at 2 standard errors (`2 (2 sd / step)^2`):",
        "",
    ]
    tmp = md.with_name("." + md.name + ".tmp")
    tmp.write_text("\n".join(head + lines) + "\n")
    tmp.replace(md)

    # figure: the changing columns and one unchanged O column near them, truth vs estimate
    match = score["match"].values
    changing = [j for j in (a, b, c) if match[j] >= 0]
    truth0 = movie["column_count"].values[0]
    steady = [j for j in np.flatnonzero((match >= 0) & ~movie["changing"].values & (movie["column_Z"].values == Z_O)
                                        & (truth0 >= 3))]
    if steady:
        d = np.hypot(movie["column_x"].values[steady] - movie["column_x"].values[a],
                     movie["column_y"].values[steady] - movie["column_y"].values[a])
        changing.append(int(steady[int(np.argmin(d))]))
    fig, ax = plt.subplots(1, max(1, len(changing)), figsize=(4.2 * max(1, len(changing)), 3.6), squeeze=False,
                           layout="constrained")
    for axis, j in zip(ax[0], changing):
        k = int(match[j])
        e = tracked["expected_count"].values[:, k]
        low = np.where(tracked["count_low"].values[:, k] >= 0, tracked["count_low"].values[:, k], np.nan)
        high = np.where(tracked["count_high"].values[:, k] >= 0, tracked["count_high"].values[:, k], np.nan)
        axis.fill_between(frames, low - 0.5, high + 0.5, alpha=0.2, step="mid", label="per frame: 90 % count set")
        axis.fill_between(frames, smoothed["count_low"].values[:, k] - 0.5, smoothed["count_high"].values[:, k] + 0.5,
                          color="0.3", alpha=0.25, step="mid", label="HMM: 90 % count set")
        axis.plot(frames, e, ".", ms=4, label="per frame: expected count")
        axis.step(frames, smoothed["count"].values[:, k], where="mid", color="k", label="HMM smoothed")
        axis.step(frames, movie["column_count"].values[:, j], where="mid", color="tab:red", ls="--", label="truth")
        kind = "changing" if movie["changing"].values[j] else "unchanged"
        axis.set(xlabel="frame", ylabel="atoms", title=f"{kind} O column {j}")
    ax[0][0].legend(fontsize=7)
    fig.suptitle(f"simulated movie: {dose:g} e/pixel at {float(movie.attrs['pixel_size']):.3f} A, notebook 06's path")
    save_figure(fig, args.figure)
    print(f"wrote {args.out}, {md}, {args.figure}; total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
