"""Command line: ``python -m segdepth <command> ...``.

Commands
--------
``predict INPUT --out OUT.nc``
    Depth map of every frame of an image file (see :mod:`segdepth.data.io` for the
    formats) with the default or a given model; writes a netCDF file with
    ``depth``, ``confidence`` and optionally ``probability`` on the label grid,
    in Angstrom coordinates that overlay the input. ``--preview PNG`` also writes a
    quick-look figure of one frame (input, depth, confidence). At the end one line
    per file written names it and what it holds (stdout).

Every expected problem (unreadable or invalid input, missing model, bad pixel
size, missing output directory, a preview format matplotlib cannot write) ends
the program with exit code 2 and one line ``segdepth: error: <message>`` on
stderr. The output file is written
atomically: it is either complete or not there (nor is a partial file left);
so is the preview.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CommandError", "build_parser", "main"]

PROG = "segdepth"


class CommandError(Exception):
    """An expected error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """Argument parser whose usage errors are one line, like every other error."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise CommandError(f"{message} (see '{self.prog} --help')")


def _check_options(args) -> dict:
    """The validity check's options from the command line (only those given, so the library's defaults hold)."""
    options = dict(tta=args.tta, lattice_average=args.lattice_average, margin=args.margin)
    options["regime"] = args.regime
    if args.keep_confident is not None:
        options["keep_confident"] = args.keep_confident
    if args.keep_connected is not None:
        options["keep_connected"] = _keep_connected(args.keep_connected)
    if args.reach is not None:
        options["reach"] = _reach(args.reach)
    if args.refute_radius is not None:
        options["refute_radius"] = _refute_radius(args.refute_radius)
    return options


def _number_or_none(text: str, option: str, ok, what: str) -> float | None:
    """A number ``ok(value)`` accepts, or ``none``; anything else is refused naming ``option`` and ``what`` it takes."""
    if text == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not ok(value):
        raise CommandError(f"{option} must be {what} or 'none', got {text}")
    return value


def _beam_energy(text: str) -> float:
    """``--beam-energy``: a high tension [kV] within segdepth.data.io.BEAM_ENERGY_RANGE."""
    from segdepth.data.io import check_beam_energy

    value = _positive_float(text, "--beam-energy")
    try:
        return check_beam_energy(value, name="--beam-energy")
    except ValueError as err:
        raise CommandError(str(err)) from None


def _refute_radius(text: str) -> float | None:
    """``--refute-radius``: a distance > 0 [A], or ``none`` (every lattice window judged alone)."""
    return _number_or_none(text, "--refute-radius", lambda v: 0 < v < math.inf, "a distance > 0 [A]")


def _reach(text: str) -> float | None:
    """``--reach``: a distance >= 0 [A], or ``none`` (the hysteresis grows as far as the readings are joined)."""
    return _number_or_none(text, "--reach", lambda v: 0 <= v < math.inf, "a distance >= 0 [A]")


def _keep_connected(text: str) -> float | None:
    """``--keep-connected``: a probability in (0, 1], or ``none`` (no growth)."""
    return _number_or_none(text, "--keep-connected", lambda v: 0 < v <= 1, "a probability in (0, 1]")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _positive_float(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CommandError(f"{option} must be a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise CommandError(f"{option} must be finite and > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``segdepth`` argument parser, one sub-parser per command."""
    parser = _Parser(prog=PROG, description="Atomic column depth from noisy HRTEM images (Leibovich et al.).")
    from segdepth import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    p = commands.add_parser(
        "predict",
        help="depth map of an image or image stack",
        description="Predict the number of atoms in every atomic column of an HRTEM image (or every frame of a "
        "stack, frame by frame). Formats: .npy, .tif/.tiff, .nc, .dm3/.dm4, .emd, .ser/.emi, .mrc, .gif, .png.",
    )
    p.add_argument("input", metavar="INPUT", help="image file")
    p.add_argument("--out", "-o", required=True, metavar="OUT.nc", help="output netCDF file (written atomically)")
    p.add_argument("--model", metavar="PATH", help="model file (.safetensors with its card); default: the shipped "
                   "robust model (segdepth.learn.inference.DEFAULT_MODEL; input binned to 0.212 A)")
    p.add_argument("--reference", action="store_true", help="the checked reference path instead: the shipped "
                   "paper-layout model in plain eager float32 (about 50x slower)")
    p.add_argument("--pixel-size", metavar="A", help="pixel size of INPUT [Angstrom]; overrides the file's calibration")
    p.add_argument("--beam-energy", metavar="KV", help="high tension of INPUT [kV]; overrides what the file states "
                   "(DigitalMicrograph, TIA and Velox files state it). The models were trained on 300 kV images: "
                   "frames at another energy are named in a warning (README, 'Other microscopes')")
    p.add_argument(
        "--calibrate",
        nargs="?",
        const="CeO2",
        metavar="PHASES",
        help="measure the pixel size from the lattice reflections (power spectrum averaged over the selected frames, "
        "at most 50) with the {111}, {200}, {220} spacings of these comma-separated cubic phases (default CeO2; "
        "'CeO2,Pt' for Pt on CeO2); fails when no consistent lattice is found",
    )
    p.add_argument(
        "--lambda",
        dest="lam",
        metavar="L",
        help="dose of INPUT [electrons per pixel in vacuum], 'auto' to estimate it from the grey values (Poisson "
        "with unknown gain: mean^2 / variance, over time when there are several frames), or 'none'. Default: "
        "estimated as with 'auto', and left unknown when it cannot be; recorded, compared "
        "with the model's training dose and, where the model's card asks for dose matching, used to read frames "
        "cleaner than its target at that dose (several noisy copies averaged; --no-dose-matching turns it off)",
    )
    p.add_argument("--frames", metavar="SEL", help="frames to process: '5', '0:10', '0:40:2' or '1,4,7' (default all)")
    p.add_argument(
        "--crop", metavar="X0:X1,Y0:Y1", help="region to process [pixels, end exclusive], e.g. '0:180,:' (left half)"
    )
    p.add_argument("--chunk", type=int, default=8, metavar="N", help="frames read at a time (default 8)")
    p.add_argument("--probabilities", action="store_true", help="also write the per-pixel depth distribution")
    p.add_argument("--tile", type=int, default=512, metavar="N", help="tile edge [model pixels] (default 512)")
    p.add_argument("--overlap", type=int, default=64, metavar="N", help="tile overlap [model pixels] (default 64)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="tiles per forward pass, of consecutive frames when a frame has fewer (default 1)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="where the estimate applies (default on): lattice maps of the frames (vacuum beyond --margin "
                   "of any lattice is reported as depth 0; a lattice that is not CeO2 [110] is not valid), a second "
                   "pass on the frame rotated by 180 degrees (--rotated-model; where the two disagree by more than 1 "
                   "atom: not valid), strong lattice windows read more than 15 degrees from the model's orientation "
                   "(another grain: not valid), frames that look underfocused (--regime); writes crystal, "
                   "valid, valid_reason, lattice_score, ceo2_score, disagreement, underfocus_score, quasi_score and "
                   "depth_low / depth_high (the range of each pixel's 90 %% count set, with the probability mass "
                   "calibrated for the default: attribute count_set_mass). "
                   "--no-check writes the network's raw output, about 3x faster")
    p.add_argument("--dose-matching", action=argparse.BooleanOptionalAction, default=True,
                   help="with --lambda: read frames cleaner than the model's dose-matching target (its card) at that "
                   "target, several noisy copies averaged (default on; costs that many network passes)")
    p.add_argument("--orientation", default="auto", metavar="DEG",
                   help="direction of CeO2 [001] in the frames [degrees from +x towards +y, i.e. clockwise on the "
                   "displayed image]; the models were trained with [001] along y (90) and frames whose lattice is "
                   "turned by 3 degrees or more are turned to it, read and turned back. 'auto' (default): measured "
                   "from the power spectrum of the selected frames (at most 50), at the pixel size; 'none': read as "
                   "they are")
    p.add_argument("--regime", choices=("off", "warn", "flag"), default="warn",
                   help="with --check: read the frames also with the contrast-regime model (segdepth.learn.regime) "
                   "and write underfocus_score; 'warn' (default): name the frames whose crystal looks underfocused "
                   "(columns dark: the other defocus sign, which the counting models never saw); 'flag': also make "
                   "them not valid (reason wrong_focus); 'off': skip it. Not 'flag' by default: the real Pt/CeO2 "
                   "movie's CeO2 support scores as underfocused too (README, 'The contrast regime'). Unless 'off', "
                   "the coherence model also reads them and writes quasi_score, with a warning naming the frames "
                   "that look simulated with abTEM's quasi-coherent focal-spread envelope (never a flag)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="with --check: the 180-degree test-time pass (default on)")
    p.add_argument("--rotated-model", metavar="PATH",
                   help="with --check and --tta: the model (same pixel size and output grid) of the 180-degree pass, "
                   "so the reported probabilities are a two-model ensemble's and the disagreement is between the "
                   "two models; 'same': the model itself. Default: with the default model its second model "
                   "(segdepth.learn.inference.DEFAULT_ROTATED_MODEL, the same weights reading the input divided by "
                   "its local mean; README, \"The default's second pass\"), with --model the model itself")
    p.add_argument("--margin", type=float, default=4.0, metavar="A",
                   help="with --check: vacuum beyond this distance from a lattice [Angstrom] (default 4)")
    p.add_argument("--keep-confident", type=float, default=None, metavar="P",
                   help="with --check: a column reading at least this sure (probability of a non-zero count) "
                   "survives the vacuum mask (default 0.97, segdepth.learn.validity.KEEP_CONFIDENT)")
    p.add_argument("--keep-connected", default=None, metavar="P",
                   help="with --check: a column reading at least this sure joined to the lattice or to a confident "
                   "reading (gaps up to 2 A) survives the vacuum mask too (hysteresis; in a movie over "
                   "--lattice-average frames; default 0.5, segdepth.learn.validity.KEEP_CONNECTED; 'none': no growth)")
    p.add_argument("--reach", default=None, metavar="A",
                   help="with --check: the hysteresis keeps readings at most this far from the lattice mask or a "
                   "confident reading [Angstrom] (default segdepth.learn.validity.REACH; 'none': as far as they are "
                   "joined)")
    p.add_argument("--refute-radius", default=None, metavar="A",
                   help="with --check: a crystal pixel more than 30 %% of whose lattice windows within this radius "
                   "[Angstrom] refute CeO2 [110] is other lattice too (a grain seen along another zone axis; default "
                   "segdepth.learn.validity.REFUTE_RADIUS; 'none': every window judged alone)")
    p.add_argument("--lattice-average", type=int, default=5, metavar="N",
                   help="with --check: odd number of neighbouring frames averaged for the lattice maps, within a "
                   "chunk (default 5)")
    p.add_argument("--preview", metavar="PNG",
                   help="also write a quick-look figure of one frame: the input, the depth map and the confidence "
                   "side by side (with --check: the pixels not vouched for hatched); any format matplotlib writes "
                   "(.png, .pdf, .svg, ...)")
    p.add_argument("--preview-frame", type=int, metavar="N",
                   help="with --preview: the frame to show, its number in INPUT (default the first predicted frame)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    p.set_defaults(func=_predict_command)

    c = commands.add_parser(
        "columns",
        help="per-column counts over time of a movie (or one image)",
        description="Find the atomic columns of a CeO2 [110] movie and follow their atom counts over time: every "
        "frame read with the validity check, the frames aligned (phase correlation), the columns found in the "
        "region that is valid CeO2 [110], tracked and their counts smoothed in time (hidden Markov model). Writes a "
        "(frame, column) table: position, element (Ce or O), the probability of each count, the expected count and "
        "its spread, the 90 %% count set, the smoothed count and its set, and whether the column was valid in that "
        "frame (README, 'Columns, not pixels'). The selected frames are read into memory at once.",
    )
    c.add_argument("input", metavar="INPUT", help="image or movie file (formats as for predict)")
    c.add_argument("--out", "-o", required=True, metavar="COLUMNS.nc", help="output netCDF file (written atomically)")
    c.add_argument("--model", metavar="PATH", help="model file (both passes); default: the shipped default and its "
                   "second model")
    c.add_argument("--pixel-size", metavar="A", help="pixel size of INPUT [Angstrom]; overrides the file's calibration")
    c.add_argument("--calibrate", nargs="?", const="CeO2", metavar="PHASES",
                   help="measure the pixel size from the lattice reflections (as predict --calibrate)")
    c.add_argument("--lambda", dest="lam", metavar="L",
                   help="dose of INPUT [electrons per pixel in vacuum], 'auto' (default: estimated) or 'none'")
    c.add_argument("--beam-energy", metavar="KV", help="high tension of INPUT [kV] (as predict --beam-energy)")
    c.add_argument("--frames", metavar="SEL", help="frames to use: '5', '0:10', '0:40:2' or '1,4,7' (default all)")
    c.add_argument("--crop", metavar="X0:X1,Y0:Y1", help="region to use [pixels, end exclusive], e.g. '0:180,:'")
    c.add_argument("--average", type=int, default=5, metavar="N",
                   help="frames in the running means of aligned frames that decide the valid CeO2 region (default 5; "
                   "1: the single frames)")
    c.add_argument("--p-change", type=float, default=0.05, metavar="P",
                   help="the hidden Markov model's probability that a column's count changes between frames "
                   "(default 0.05)")
    c.set_defaults(func=_columns_command)
    return parser


def _check_output(out: Path) -> None:
    directory = out.parent if str(out.parent) else Path(".")
    if not directory.is_dir():
        raise CommandError(f"{directory}: output directory does not exist")
    if out.is_dir():
        raise CommandError(f"{out}: is a directory, expected an output file name")


def _check_preview(preview: Path, out: Path) -> None:
    """Fail before any prediction when the preview cannot be written (missing directory, unknown format)."""
    from segdepth.apps.plotting import figure_formats

    directory = preview.parent if str(preview.parent) else Path(".")
    if not directory.is_dir():
        raise CommandError(f"--preview {preview}: directory {directory} does not exist")
    if preview.is_dir():
        raise CommandError(f"--preview {preview}: is a directory, expected an image file name")
    formats = figure_formats()
    suffix = preview.suffix.lower().lstrip(".")
    if suffix not in formats:
        what = f"'.{suffix}' files" if suffix else "a file without a suffix"
        raise CommandError(f"--preview {preview}: matplotlib cannot write {what}; use one of "
                           + ", ".join(f".{f}" for f in formats))
    if preview.resolve() == out.resolve():
        raise CommandError(f"--preview and --out name the same file ({preview})")


def _pixel_size_option(args) -> float | None:
    """``--pixel-size`` [A] (``None`` when not given); it and ``--calibrate`` exclude each other."""
    from segdepth.data.io import check_pixel_size

    pixel_size = None if args.pixel_size is None else check_pixel_size(args.pixel_size, name="--pixel-size")
    if pixel_size is not None and args.calibrate is not None:
        raise CommandError("--pixel-size and --calibrate exclude each other")
    return pixel_size


def _estimated_dose(option: str | None, frames, source: Path) -> float | None:
    """The dose of (at most 50 of) ``frames`` (:func:`segdepth.data.calibration.estimate_dose`); when it cannot be
    estimated, ``None``, or an error when ``--lambda auto`` asked for it (``option``)."""
    from segdepth.data.calibration import estimate_dose

    try:
        return estimate_dose(frames.values[:50])
    except ValueError as err:
        if option == "auto":
            raise CommandError(f"{source}: cannot estimate --lambda: {err}") from None
        return None


def _calibrate(phases: str, frames, source: Path, attrs: dict) -> float:
    """``--calibrate``: the pixel size [A] measured on (at most 50 of) ``frames``; recorded in ``attrs``."""
    from segdepth.data.calibration import calibrate_pixel_size, cubic_spacings

    spacings = {}
    for phase in phases.split(","):
        spacings.update(cubic_spacings(phase.strip()))
    try:
        cal = calibrate_pixel_size(frames.values[:50], spacings=spacings)
    except ValueError as err:
        raise CommandError(f"{source}: {err}") from None
    attrs.update(calibrated_pixel_size=cal.pixel_size, calibrated_pixel_size_uncertainty=cal.uncertainty,
                 calibration_peaks=json.dumps(cal.peaks), calibration_phases=phases)
    print(f"{PROG}: calibrated pixel size {cal}", file=sys.stderr)
    return cal.pixel_size


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _predict_command(args: argparse.Namespace) -> int:
    from segdepth.data.io import READERS, frame_indices, parse_crop, parse_frames, read_image

    out = Path(args.out)
    _check_output(out)
    preview = None if args.preview is None else Path(args.preview)
    if preview is not None:
        _check_preview(preview, out)
    elif args.preview_frame is not None:
        raise CommandError("--preview-frame needs --preview")
    pixel_size = _pixel_size_option(args)
    lam = None if args.lam in (None, "auto", "none") else _positive_float(args.lam, "--lambda")
    energy = None if args.beam_energy is None else _beam_energy(args.beam_energy)
    limits = (("--tile", args.tile, 1), ("--overlap", args.overlap, 0), ("--batch-size", args.batch_size, 1),
              ("--chunk", args.chunk, 1), ("--lattice-average", args.lattice_average, 1))
    for option, value, least in limits:
        if value < least:
            raise CommandError(f"{option} must be >= {least}, got {value}")
    if args.lattice_average % 2 == 0:
        raise CommandError(f"--lattice-average must be odd, got {args.lattice_average}")
    if not args.margin > 0 or args.margin != args.margin:
        raise CommandError(f"--margin must be a positive distance [A], got {args.margin}")
    if args.rotated_model is not None and not (args.check and args.tta):
        raise CommandError("--rotated-model needs the validity check's 180-degree pass (drop --no-check / --no-tta)")
    if args.rotated_model not in (None, "same") and not Path(args.rotated_model).is_file():
        raise CommandError(f"{args.rotated_model}: rotated model file not found")
    if args.keep_confident is not None and not 0 < args.keep_confident <= 1:
        raise CommandError(f"--keep-confident must be a probability in (0, 1], got {args.keep_confident}")
    if args.keep_connected is not None:
        _keep_connected(args.keep_connected)  # refused here, before anything is read
    if args.reach is not None:
        _reach(args.reach)
    if args.refute_radius is not None:
        _refute_radius(args.refute_radius)
    frames = parse_frames(args.frames)
    crop = parse_crop(args.crop)

    # validate the input (and find its frames) before loading a model; long series are read chunk by chunk
    source = Path(args.input)
    reader = READERS.get(source.suffix.lower())  # None: read_image names the problem
    if reader is not None and reader.streams:
        probe = read_image(source, pixel_size=pixel_size, frames=[0], crop=crop)
        keys = frame_indices(frames, probe.attrs["frames_in_file"], source)
        n_first = max(args.chunk, 50)
        first = read_image(source, pixel_size=pixel_size, frames=keys[:n_first], crop=crop)
    else:
        first = read_image(source, pixel_size=pixel_size, frames=frames, crop=crop)
        keys = [int(k) for k in first["frame"].values]
        n_first = len(keys)
    preview_frame = keys[0] if args.preview_frame is None else args.preview_frame
    if preview is not None and preview_frame not in keys:
        raise CommandError(f"--preview-frame {preview_frame} is not among the predicted frames "
                           f"({_frame_summary(keys)})")
    attrs = {"input": str(args.input)}
    if energy is not None:
        attrs["beam_energy_source"] = "--beam-energy"
    elif "beam_energy" in first.attrs:
        attrs["beam_energy_source"] = "file"
    if args.calibrate is not None:
        pixel_size = _calibrate(args.calibrate, first, source, attrs)
        first = read_image(source, pixel_size=pixel_size, frames=keys[:n_first], crop=crop)
    from segdepth.learn.inference import image_pixel_size, load_default_model, predict_to_netcdf

    image_pixel_size(first)  # fail fast (before torch is imported) when the pixel size is unknown
    if args.lam in (None, "auto"):  # without --lambda it is estimated too (quietly), so that dose matching applies
        lam = _estimated_dose(args.lam, first, source)
        if lam is not None:
            attrs["lambda_estimated"] = lam
            if args.lam == "auto":
                print(f"{PROG}: estimated dose {lam:.3g} e/pixel (Poisson model, unknown gain)", file=sys.stderr)

    if args.reference and args.model is not None:
        raise CommandError("--reference and --model exclude each other")
    if args.model is None:
        model, card = load_default_model(reference=args.reference)
    else:
        model_path = Path(args.model)
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path}: model file not found")
        from segdepth.learn.modelio import load_model

        model, card = load_model(model_path)
    check = _check_options(args) if args.check else None
    orientation = _orientation_option(args.orientation, first, attrs, card)
    rotated = args.rotated_model
    if rotated is None and args.model is None and not args.reference and args.check and args.tta:
        rotated = "default"  # the default model's second pass
    if rotated not in (None, "same"):
        from segdepth.learn.modelio import load_model
        from segdepth.learn.validity import check_same_grid

        if rotated == "default":
            rotated_model, rotated_card = load_default_model(rotated=True)
        else:
            rotated_model, rotated_card = load_model(Path(rotated))
        try:
            check_same_grid(card, rotated_card)
        except ValueError as err:
            raise CommandError(f"--rotated-model {rotated}: {err}") from None
        check.update(rotated_model=rotated_model.eval(), rotated_card=rotated_card)
        attrs["rotated_model"] = rotated
    progress = sys.stderr.isatty() if args.progress is None else args.progress

    preview_image = []  # the preview frame's input, kept when its chunk is read

    def chunk(start):  # read only when needed: a resumed run skips the chunks it already has
        if start + args.chunk <= first.sizes["frame"] or first.sizes["frame"] == len(keys):
            data = first.isel(frame=slice(start, start + args.chunk))
        else:
            data = read_image(source, pixel_size=pixel_size, frames=keys[start : start + args.chunk], crop=crop)
        if preview is not None and preview_frame in data["frame"].values:
            preview_image[:] = [data.sel(frame=[preview_frame])]
        return data

    def chunks():
        for start in range(0, len(keys), args.chunk):
            yield lambda start=start: chunk(start)

    attrs["model"] = ("reference" if args.reference else "default") if args.model is None else str(args.model)
    attrs["command"] = json.dumps(["segdepth", *sys.argv[1:]] if args.argv is None else ["segdepth", *args.argv])
    predict_to_netcdf(
        chunks(),
        model,
        card,
        out,
        n_frames=len(keys),
        attrs=attrs,
        progress=progress,
        tile=args.tile,
        overlap=args.overlap,
        lam=lam,
        return_probabilities=args.probabilities,
        batch_size=args.batch_size,
        fast=not args.reference,
        check=check,
        dose_matching=args.dose_matching,
        orientation=orientation,
        beam_energy=energy,
    )
    import xarray as xr

    with xr.open_dataset(out) as ds:
        n_frames, n_y, n_x = ds["depth"].shape
        label = ds.attrs["label_pixel_size"]
        contents = ", ".join(ds.data_vars)
        checked = "valid" in ds
        if checked:
            from segdepth.learn.validity import summary

            checked_summary = summary(ds)
        if preview is not None:
            result = ds.sel(frame=[preview_frame]).load()  # one frame of the written file
    wrote = [f"{PROG}: wrote {out}: {contents} for {_plural(n_frames, 'frame')} of {n_y} x {n_x} label pixels "
             f"at {label:.4g} A"]
    if preview is not None:
        from segdepth.apps.plotting import plot_preview, save_figure

        if preview_image:
            image = preview_image[0]
        elif preview_frame in first["frame"].values:
            image = first.sel(frame=[preview_frame])
        else:  # a resumed run that skipped the preview frame's chunk: read that frame only
            image = read_image(source, pixel_size=pixel_size, frames=[preview_frame], crop=crop)
        fig = plot_preview(image, result, frame=preview_frame, title=f"{source.name}, frame {preview_frame}")
        save_figure(fig, preview)
        hatched = " (pixels not vouched for hatched)" if checked else ""
        wrote.append(f"{PROG}: wrote {preview}: input, depth{hatched}, confidence of frame {preview_frame}")
    if checked:
        print(f"{PROG}: {checked_summary}")
    for line in wrote:
        print(line)
    return 0


def _columns_command(args: argparse.Namespace) -> int:
    import numpy as np

    from segdepth.data.io import parse_crop, parse_frames, read_image

    out = Path(args.out)
    _check_output(out)
    pixel_size = _pixel_size_option(args)
    lam = None if args.lam in (None, "auto", "none") else _positive_float(args.lam, "--lambda")
    energy = None if args.beam_energy is None else _beam_energy(args.beam_energy)
    if args.average < 1:
        raise CommandError(f"--average must be >= 1, got {args.average}")
    if not 0 < args.p_change < 1:
        raise CommandError(f"--p-change must be a probability in (0, 1), got {args.p_change}")
    frames, crop = parse_frames(args.frames), parse_crop(args.crop)
    source = Path(args.input)
    image = read_image(source, pixel_size=pixel_size, frames=frames, crop=crop)
    attrs = {}  # the calibration's, when measured
    if args.calibrate is not None:
        pixel_size = _calibrate(args.calibrate, image, source, attrs)
        image = read_image(source, pixel_size=pixel_size, frames=frames, crop=crop)
    if energy is not None:
        image.attrs["beam_energy"] = energy
    from segdepth.learn.inference import image_pixel_size, load_default_model

    px = image_pixel_size(image)  # fail fast (before torch is imported) when the pixel size is unknown
    if args.lam in (None, "auto"):
        lam = _estimated_dose(args.lam, image, source)
    if args.model is None:
        (model, card), rotated = load_default_model(), load_default_model(rotated=True)
    else:
        from segdepth.learn.modelio import load_model

        if not Path(args.model).is_file():
            raise FileNotFoundError(f"{args.model}: model file not found")
        (model, card), rotated = load_model(Path(args.model)), None
    from segdepth.apps.moviescore import column_table, run_movie_path, write_column_table

    path = run_movie_path(image, model, card, lam=lam, average=args.average, p_change=args.p_change, rotated=rotated)
    if not path["region"].any():
        from segdepth.learn.validity import summary

        raise CommandError(f"{source}: no region is valid CeO2 [110] in half the frames or more, no columns to "
                           f"follow: {summary(path['prediction'])}")
    table = column_table(path, source=source.name, pixel_size=px, lam=-1.0 if lam is None else float(lam),
                         model=args.model or "default", command=json.dumps(["segdepth", *(args.argv or sys.argv[1:])]),
                         **attrs)
    write_column_table(table, out)
    n = table.sizes["column"]
    elements = ", ".join(f"{int((table.element == e).sum())} {e}" for e in ("Ce", "O", "unknown")
                         if int((table.element == e).sum()))
    changing = int(((np.diff(table.smoothed_count.values, axis=0) != 0).sum(axis=0) > 0).sum())
    over = table.sizes["frame"]
    print(f"{PROG}: wrote {out}: {_plural(n, 'column')} ({elements}) over {_plural(over, 'frame')}"
          + (f"; {changing} change their smoothed count during the movie" if over > 1 else ""))
    return 0


def _orientation_option(value: str, first, attrs: dict, card: dict):
    """``--orientation``: the angle [deg] or measured orientation to pass to predict (measured once for all chunks
    when 'auto'; predict decides whether to turn), or None."""
    text = str(value).strip().lower()
    if text == "none":
        return None
    if text != "auto":
        from segdepth.learn.inference import check_finite_angle

        try:
            return check_finite_angle(text)
        except ValueError as err:
            raise CommandError(f"--orientation {value}: {err}; or 'auto' / 'none'") from None
    from segdepth.learn.inference import MIN_ROTATION, estimated_orientation, trained_orientation

    found = estimated_orientation(first.isel(frame=slice(0, 50)))
    if found is None:  # quietly: the validity check says where there is no lattice, and flags turned ones
        attrs["lattice_orientation"] = "not found: frames read as they are ([001] assumed along y)"
        return None
    attrs["lattice_orientation"] = str(found)
    turn = found.rotation_to(trained_orientation(card))
    if found.ambiguous:  # predict reads such frames as they are
        print(f"{PROG}: warning: lattice {found}: with one {{111}} reflection only the direction of [001] is "
              "ambiguous; frames read as they are", file=sys.stderr)
    elif abs(turn) >= MIN_ROTATION:
        print(f"{PROG}: lattice {found}: frames turned by {turn:.1f} deg to the model's orientation and back",
              file=sys.stderr)
    return found  # measured once: every chunk is turned alike


def _frame_summary(keys: Sequence[int]) -> str:
    if len(keys) > 1 and list(keys) == list(range(keys[0], keys[-1] + 1)):
        return f"{keys[0]}-{keys[-1]}"
    return ", ".join(map(str, keys[:10])) + (", ..." if len(keys) > 10 else "")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 success, 2 expected error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = None if argv is None else list(argv)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.func(args)
    except (CommandError, ValueError, FileNotFoundError, OSError) as err:
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
