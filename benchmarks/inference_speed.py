"""Inference speed on 1024 x 1024 frames at 5.3 pm, and what each speed-up costs in accuracy.

Run: ``python benchmarks/inference_speed.py [--threads 2] [--repeats 5] [--n-test 40]``.

Every variant is timed in this same process on the same 1024 x 1024 frame (the machine is shared:
compare the printed ratios, not absolute numbers across runs) and, when ``--data`` holds the
simulated dataset of the models' test split, scored on that split at lambda = 2.5 with the same
noise for every variant: per-column atom-count accuracy (the count at the label pixel nearest
each column centre equals the truth), its difference from the float32 eager baseline in points,
and the fraction of label pixels whose depth differs from the baseline's.

Variants, each adding to the one above it:

- the paper-layout model (``--reference``, the base-16 UNet of issue 3) in plain eager PyTorch,
  float32, its median filter sorting unfolded windows (the baseline, as shipped before issue 6);
- ``network median``: the same model with the pruned sorting-network median (identical output);
- ``folded BN + channels-last``: :func:`segdepth.learn.model.optimise_for_inference`;
- ``torch.compile`` (inductor) of that;
- a model trained on input binned 4x to the label grid (``--fast``; ``TrainConfig.input_binning``):
  16x fewer operations; eager, then folded BN in the layout ``segdepth predict`` chooses
  (contiguous for this model), the other layout, ``torch.compile``, bfloat16 autocast, and 4 frames
  per forward pass (``predict`` batches frames that way when ``batch_size`` exceeds the tiles per
  frame; the CLI's default is 4).

The last line times ``segdepth.learn.inference.predict`` end to end with its defaults (default model,
resampling, normalisation, softmax) on a 1024 x 1024 frame. A markdown table goes to ``--out``.
``--end-to-end-only --compare MODEL ...`` times only that, and then other models end to end, one frame per
call, their runs interleaved with the default's (``--fast`` does not change the end-to-end model);
``--orientation-cost`` then times the orientation step (:func:`orientation_cost`).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

GOAL_FPS = 7.7  # the paper's real series: 0.13 s per frame


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _sorting_median(model):
    """A copy of ``model`` whose median filters sort unfolded windows (the pre-issue-6 code path)."""
    from segdepth.learn.model import MedianFilter2d

    old = copy.deepcopy(model)
    for module in old.modules():
        if isinstance(module, MedianFilter2d):
            module._network = None
    return old


def _runner(net, *, binning: int, channels_last: bool, bf16: bool = False):
    """forward(x) -> float32 logits for normalised frames x (B, 1, H, W) at the dataset's pixel size."""
    from segdepth.data.preprocess import bin_image

    layout = torch.channels_last if channels_last else torch.contiguous_format

    def forward(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return net(bin_image(x, binning).contiguous(memory_format=layout)).float()

    return forward


def variants(reference, fast_models, *, compile_: bool, baseline_only: bool = False):
    """[(name, forward, batch)]: ``forward(x)`` takes a (batch, 1, H, W) frame stack."""
    from segdepth.learn.model import optimise_for_inference

    fused = optimise_for_inference(reference)
    out = [
        ("paper model, eager fp32, sorting median (baseline)", _runner(_sorting_median(reference), binning=1,
                                                                      channels_last=False), 1),
    ]
    if not baseline_only:
        out += [
            ("paper model, network median", _runner(reference, binning=1, channels_last=False), 1),
            ("  + folded BN, channels-last", _runner(fused, binning=1, channels_last=True), 1),
        ]
    if compile_ and not baseline_only:
        out.append(("  + torch.compile", _runner(torch.compile(fused), binning=1, channels_last=True), 1))
    for label, (model, card) in fast_models.items():
        b = int(card.get("input_binning", 1))
        f = optimise_for_inference(model)  # the predict path: folded BN, layout chosen for the model
        cl = f.inference_layout == "channels_last"
        other = optimise_for_inference(model, channels_last=not cl)
        out += [
            (f"{label}, eager fp32", _runner(model, binning=b, channels_last=False), 1),
            (f"  + folded BN, {f.inference_layout} (predict)", _runner(f, binning=b, channels_last=cl), 1),
            (f"  folded BN, {other.inference_layout}", _runner(other, binning=b, channels_last=not cl), 1),
        ]
        if compile_:
            out.append(("  predict path + torch.compile", _runner(torch.compile(f), binning=b, channels_last=cl), 1))
        out += [
            # bf16 in the contiguous layout took minutes per frame here: always channels-last
            ("  folded BN, channels-last + bf16 autocast", _runner(f if cl else other, binning=b, channels_last=True,
                                                                 bf16=True), 1),
            ("  predict path, 4 frames per batch", _runner(f, binning=b, channels_last=cl), 4),
        ]
    return out


def column_scores(fn, ds, indices, *, lam: float, seed: int):
    """Per-column exact count accuracy and the depth maps of ``fn`` on test samples (paired noise)."""
    from segdepth.data.preprocess import normalise
    from segdepth.learn import metrics
    from segdepth.physics.noise import poisson_noise

    preds, pred_counts, true_counts, Z = [], [], [], []
    for i in indices:
        s = ds.isel(sample=int(i))
        noisy = poisson_noise(s.image.values, lam, rng=np.random.default_rng([seed, int(i)]))
        pred = fn(torch.from_numpy(normalise(noisy))[None, None])[0].argmax(0).numpy()
        preds.append(pred)
        pred_counts.append(metrics.column_counts(pred, s.column_x.values, s.column_y.values, s.label_x.values,
                                                 s.label_y.values))
        true_counts.append(s.column_count.values.astype(np.int64))
        Z.append(s.column_Z.values.astype(np.int64))
    acc = metrics.column_count_accuracy(np.concatenate(pred_counts), np.concatenate(true_counts), np.concatenate(Z))
    return acc["exact_all"], acc["n_all"], np.stack(preds)


def end_to_end(frames, pixel, repeats, base_seconds):
    """``segdepth.learn.inference.predict`` with its defaults (resampling, normalisation, softmax, depth and
    confidence), the default model optimised once as for a movie: one frame per call, and an
    8-frame movie in one call."""
    import xarray as xr

    from segdepth.learn.inference import DEFAULT_MODEL, load_default_model, predict
    from segdepth.learn.model import optimise_for_inference

    model, card = load_default_model()
    net = optimise_for_inference(model)
    movie = xr.DataArray(np.concatenate([frames, frames]), dims=("frame", "y", "x"), attrs={"pixel_size": pixel})
    rows = []
    for name, image, n in (("one frame per call", movie[0], 1), ("8-frame movie per call", movie, 8)):
        seconds = _timed(lambda image=image: predict(image, net, card), repeats) / n
        rows.append((f"segdepth.learn.inference end to end, {name} ({DEFAULT_MODEL.name})", seconds, float("nan"),
                     float("nan")))
        ratio = "" if base_seconds is None else f" {base_seconds / seconds:6.2f}x"
        print(f"{rows[-1][0]:52s} {seconds:7.3f} s/frame {1 / seconds:6.2f} fps{ratio}", flush=True)
    return rows


def end_to_end_compare(frames, pixel, repeats, paths):
    """``predict`` end to end, one frame per call, for the default model and each model of ``paths``, the runs
    interleaved (default, then each other model, ``repeats`` times) so that a slow spell of a shared machine hits
    them alike; prints each median and its speed relative to the default."""
    import xarray as xr

    from segdepth.learn.inference import DEFAULT_MODEL, predict
    from segdepth.learn.model import optimise_for_inference
    from segdepth.learn.modelio import load_model

    frame = xr.DataArray(frames[0], dims=("y", "x"), attrs={"pixel_size": pixel})
    nets = {}
    for path in [str(DEFAULT_MODEL), *paths]:
        model, card = load_model(path)
        nets[Path(path).stem] = (optimise_for_inference(model), card)
    times = {name: [] for name in nets}
    for net, card in nets.values():
        predict(frame, net, card)  # warm-up
    for _ in range(repeats):
        for name, (net, card) in nets.items():
            t0 = time.perf_counter()
            predict(frame, net, card)
            times[name].append(time.perf_counter() - t0)
    base = float(np.median(times[DEFAULT_MODEL.stem]))
    for name, values in times.items():
        seconds = float(np.median(values))
        print(f"end to end, one frame per call, interleaved ({name}) {seconds:7.3f} s/frame {1 / seconds:6.2f} fps "
              f"{base / seconds:5.2f}x the default", flush=True)


def orientation_cost(frames, pixel, repeats):
    """What the orientation step costs ``predict`` end to end (one 1024^2 frame per call, the default model, runs
    interleaved): read as given (``orientation=None``), measured (``"auto"``: the power-spectrum estimate; this
    noise frame holds no lattice, so nothing is turned) and turned by 30 and 45 degrees (the lattice's direction
    given, so that the frame is turned onto its canvas, read and the maps turned back)."""
    import xarray as xr

    from segdepth.learn.inference import load_default_model, predict
    from segdepth.learn.model import optimise_for_inference

    model, card = load_default_model()
    net = optimise_for_inference(model)
    frame = xr.DataArray(frames[0], dims=("y", "x"), attrs={"pixel_size": pixel})
    runs = {"as given (orientation=None)": None, "measured (orientation='auto', nothing to turn)": "auto",
            "turned by 30 degrees": 60.0, "turned by 45 degrees": 45.0}
    times = {name: [] for name in runs}
    for value in runs.values():
        predict(frame, net, card, orientation=value)  # warm-up
    for _ in range(repeats):
        for name, value in runs.items():
            t0 = time.perf_counter()
            predict(frame, net, card, orientation=value)
            times[name].append(time.perf_counter() - t0)
    base = float(np.median(times["as given (orientation=None)"]))
    for name, values in times.items():
        seconds = float(np.median(values))
        print(f"end to end, one frame per call, {name}: {seconds:7.3f} s/frame {1 / seconds:6.2f} fps "
              f"{base / seconds:5.2f}x as given", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=1024, help="frame edge [pixels of 5.3 pm]")
    ap.add_argument("--reference", default="segdepth/models/segdepth_base16_lam2.5.safetensors",
                    help="the paper-layout model (the baseline)")
    ap.add_argument("--fast", nargs="*", default=["segdepth/models/segdepth_robust_wise_base8_bin4.safetensors",
                                                  "segdepth/models/segdepth_fast_base8_bin4_lam2.5.safetensors"],
                    help="binned-input models (missing files are skipped)")
    ap.add_argument("--data", default="data/simulated/cpu_train", help="dataset with the models' test split")
    ap.add_argument("--n-test", type=int, default=40, help="test images for the accuracy check (0: skip)")
    ap.add_argument("--lam", type=float, default=2.5, help="test dose [e/pixel at 5.3 pm]")
    ap.add_argument("--seed", type=int, default=1, help="seed of the test noise")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variants")
    ap.add_argument("--end-to-end-only", action="store_true", help="time only segdepth.learn.inference end to end")
    ap.add_argument("--compare", nargs="+", default=[], metavar="MODEL",
                    help="with --end-to-end-only: also time these models end to end, interleaved with the default")
    ap.add_argument("--orientation-cost", action="store_true",
                    help="with --end-to-end-only: also time predict as given, measuring the orientation, and turning")
    ap.add_argument("--baseline-only", action="store_true",
                    help="of the paper model, time only the baseline (the other variants take ~10 min)")
    ap.add_argument("--out", default="data/results/inference_speed.md", help="markdown table ('' for none)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from segdepth.learn.modelio import load_model
    reference, ref_card = load_model(args.reference)
    reference.eval()
    fast = {}
    for path in args.fast:
        if Path(path).is_file():
            model, card = load_model(path)
            fast[f"binned 4x, base {card['architecture']['base_channels']}"] = (model.eval(), card)
        else:
            print(f"skipped (not found): {path}")

    pixel = float(ref_card["sampling"])
    rng = np.random.default_rng(0)
    frames = rng.poisson(args.lam, (4, args.size, args.size)).astype(np.float32)
    frames /= frames.mean(axis=(-2, -1), keepdims=True)
    x = torch.from_numpy(frames)[:, None]

    ds, idx = None, []
    if args.n_test and Path(args.data).exists():
        from segdepth.data.store import open_dataset

        ds = open_dataset(args.data, load=True)
        test = ref_card.get("split", {}).get("test_structures", [])
        idx = np.flatnonzero(np.isin(ds.structure.values, test))
        idx = idx[:: max(1, idx.size // args.n_test)][: args.n_test]
    print(f"{args.size}^2 frames at {pixel * 100:.2f} pm, {args.threads} threads, {len(idx)} test images "
          f"(lambda {args.lam}) for accuracy", flush=True)

    if args.end_to_end_only:
        end_to_end(frames * args.lam, pixel, args.repeats, None)
        if args.compare:
            end_to_end_compare(frames * args.lam, pixel, args.repeats, args.compare)
        if args.orientation_cost:
            orientation_cost(frames * args.lam, pixel, args.repeats)
        return 0
    rows, base = [], None
    for name, fn, batch in variants(reference, fast, compile_=not args.no_compile, baseline_only=args.baseline_only):
        seconds = _timed(lambda fn=fn, batch=batch: fn(x[:batch]), args.repeats) / batch
        acc, n_cols, pred = (float("nan"), 0, None)
        if len(idx) and batch == 1:
            acc, n_cols, pred = column_scores(fn, ds, idx, lam=args.lam, seed=args.seed)
        if base is None:
            base = (seconds, acc, pred)
        differ = float(np.mean(pred != base[2])) if pred is not None and base[2] is not None else float("nan")
        rows.append((name, seconds, acc, differ))
        print(f"{name:52s} {seconds:7.3f} s/frame {1 / seconds:6.2f} fps {base[0] / seconds:6.2f}x  "
              f"column exact {acc:.4f} ({100 * (acc - base[1]):+.2f} pts, {n_cols} columns)  "
              f"depth differs {100 * differ:.2f} %", flush=True)

    rows += end_to_end(frames * args.lam, pixel, args.repeats, base[0])

    if args.out:
        from segdepth.data.store import atomic_write

        lines = [
            f"Inference on {args.size} x {args.size} frames at {pixel * 100:.2f} pm, {args.threads} threads "
            f"(`benchmarks/inference_speed.py`); accuracy: per-column exact atom counts on {len(idx)} test images "
            f"at lambda = {args.lam}, same noise for every variant. Goal: {GOAL_FPS} frames/s.",
            "",
            "| variant | s / frame | frames / s | speed-up | column count accuracy | vs baseline (points) "
            "| label pixels differing |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, seconds, acc, differ in rows:
            cells = [name.strip(), f"{seconds:.3f}", f"{1 / seconds:.2f}", f"{base[0] / seconds:.1f}x"]
            cells += ["" if not np.isfinite(acc) else f"{acc:.4f}",
                      "" if not np.isfinite(acc) else f"{100 * (acc - base[1]):+.2f}",
                      "" if not np.isfinite(differ) else f"{100 * differ:.2f} %"]
            lines.append("| " + " | ".join(cells) + " |")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
