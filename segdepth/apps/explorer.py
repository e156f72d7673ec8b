"""Interactive explorer (issue 14): pick a particle, a lens and a dose; see the image, the estimate and the truth.

The core, :class:`Explorer`, has no widget dependency. :meth:`Explorer.view` simulates (or recalls) one
noisy HRTEM image of a CeO2 particle seen along [110], runs the depth model on it and returns the noisy
and clean images, the estimate, its confidence and the true depth map, with the per-column accuracy.
Its three stages are cached separately, so that a change costs only what it has to:

- a new **particle** (outline, thickness, vacancy rate) builds the atoms and runs the multislice
  (:func:`segdepth.physics.simulation.simulate_exit_wave`, the slow step: seconds),
- a new **lens** (overfocus, focal spread) images the cached exit wave again
  (:func:`segdepth.physics.simulation.image_exit_wave`, medium),
- a new **dose** (lambda) or noise seed only draws new shot noise and predicts again (fast).

Exit waves (with their structures and true depth maps) and clean images are kept in two small LRU
caches, keyed by the particle and by (particle, lens); :attr:`Explorer.calls` counts what actually
ran. :func:`plot_view` draws a view in four panels; :meth:`Explorer.widgets` builds the ipywidgets
UI (sliders, a dropdown, the figure as a PNG and a status line) and :meth:`Explorer.show` displays
it; ipywidgets is imported only there (``pip install segdepth[explore]``). Served as an app with
``voila notebooks/08_explorer.ipynb``.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import warnings
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import xarray as xr

from segdepth.constants import MAX_ATOMS, check_int
from segdepth.learn.metrics import column_count_accuracy, column_counts
from segdepth.physics.generate import GenerationParameters
from segdepth.physics.labels import label_coordinates, make_label_maps
from segdepth.physics.noise import check_lambda, poisson_noise
from segdepth.physics.simulation import PAPER_SAMPLING, Microscope, image_exit_wave, simulate_exit_wave
from segdepth.physics.structures import OUTLINES, build_particle, random_particle_spec

__all__ = ["Explorer", "ViewFigure", "plot_view", "figure_png", "CONTROLS", "lens_for"]

#: The controls of the UI: name -> (kind, default, lower, upper, step, description). ``lam`` is a
#: logarithmic slider (bounds in electrons per 0.053 A pixel in vacuum; the robust model was trained at
#: 0.2-32), ``overfocus`` and ``focal_spread`` are in A (the robust model's envelope: 5-110 and 8-40).
CONTROLS = {
    "surface": ("dropdown", "flat", None, None, None, "outline"),
    "thickness": ("int", 6, 1, MAX_ATOMS, 1, "thickness [atoms]"),
    "vacancy": ("float", 0.0, 0.0, 0.3, 0.01, "O vacancies"),
    "overfocus": ("float", 50.0, 5.0, 110.0, 1.0, "overfocus [A]"),
    "focal_spread": ("float", 15.0, 0.0, 45.0, 1.0, "focal spread [A]"),
    "lam": ("log", 2.5, 0.1, 100.0, 0.05, "dose [e/px]"),
    "noise_seed": ("int", 0, 0, 99, 1, "noise seed"),
}


def _odd(n: float) -> int:
    n = int(math.ceil(n))
    return n if n % 2 else n + 1


def lens_for(focal_spread: float, base: Microscope = Microscope()) -> Microscope:
    """``base`` with focal spread ``focal_spread`` [A] and enough defocus samples for it.

    As the randomised training optics: at least 7 samples, 7 per 15 A of spread (odd); one sample
    (no average) at zero spread.
    """
    if not np.isfinite(focal_spread) or focal_spread < 0:
        raise ValueError(f"focal_spread must be a finite number >= 0 A, got {focal_spread!r}")
    samples = 1 if focal_spread == 0 else max(7, _odd(7 * focal_spread / 15.0))
    return replace(base, defocus_spread=float(focal_spread), defocus_samples=samples)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run the block with ``n`` torch threads (``None``: unchanged), restoring the setting afterwards."""
    if n is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _LRU:
    """A tiny least-recently-used cache with hit and miss counts."""

    def __init__(self, size: int):
        self.size = int(size)
        self.data: OrderedDict = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key, make):
        if key in self.data:
            self.hits += 1
            self.data.move_to_end(key)
            return self.data[key]
        self.misses += 1
        value = make()
        self.data[key] = value
        while len(self.data) > self.size:
            self.data.popitem(last=False)
        return value

    def __contains__(self, key) -> bool:
        return key in self.data

    def __len__(self) -> int:
        return len(self.data)


class Explorer:
    """Simulate, image, noise and predict one particle at a time, caching exit waves and clean images.

    Parameters
    ----------
    model, card : optional
        The depth model and its card (:func:`segdepth.learn.modelio.load_model`); default: the shipped
        robust model (:func:`segdepth.learn.inference.load_default_model`), loaded on the first prediction.
    gpts : int
        Simulation grid points per side at ``sampling``: 1536 (the ``cpu`` preset's 40.7 A field, a
        768 px image of 0.053 A pixels, a particle of ~50-90 columns; multislice 5-10 s on two busy
        cores) or 1024 (the ``tiny`` preset's 27 A field: only a few columns fit inside the vacuum,
        multislice 1-2 s). A multiple of 8 whose field leaves room for crystal inside the 10 A
        vacuum (at least 912).
    sampling : float
        Simulation sampling [A] (the paper's 0.0265; never coarser).
    seed : int
        Geometry of the particles: each outline family has one particle per seed, whatever its
        thickness and vacancy rate (vacancies at a higher rate are a superset of those at a lower one).
    cache_size : int
        Particles (exit waves) kept; clean images kept: four per particle.
    microscope : Microscope
        Lens apart from overfocus and focal spread (energy, Cs, C5, aperture, residual aberrations).
    vacuum : float
        Vacuum margin of the particle [A] (>= 10).
    threads : int or None
        Torch threads of a prediction (restored afterwards). One is fastest for this small input,
        and many times faster than two on a machine whose cores are busy; ``None``: leave torch's setting.
    """

    binning = 2
    label_factor = 4

    def __init__(self, model=None, card=None, *, gpts: int = 1536, sampling: float = PAPER_SAMPLING, seed: int = 0,
                 cache_size: int = 8, microscope: Microscope = Microscope(), vacuum: float = 10.0,
                 threads: int | None = 1):
        check_int(cache_size, "cache_size")
        if (model is None) != (card is None):
            raise ValueError("pass both the model and its card, or neither for the shipped default model")
        #: The simulation grid (checked as a dataset's: sampling, divisibility, room inside the vacuum).
        self.grid = GenerationParameters(gpts=gpts, sampling=sampling, binning=self.binning,
                                         label_factor=self.label_factor, vacuum=float(vacuum))
        self.gpts, self.sampling, self.seed = int(gpts), float(sampling), int(seed)
        self.microscope, self.vacuum = microscope, float(vacuum)
        self._model, self._card = model, card
        self.threads = None if threads is None else check_int(threads, "threads")
        self._particles = _LRU(cache_size)
        self._images = _LRU(4 * cache_size)
        #: What actually ran: multislice simulations, lens imagings, noise draws + predictions.
        self.calls = {"multislice": 0, "image": 0, "predict": 0}
        #: The most recent view (:meth:`view`), or ``None``.
        self.last_view: xr.Dataset | None = None
        self.controls: dict = {}

    # ----------------------------------------------------------------- grids

    @property
    def extent(self) -> float:
        """Field of view [A]."""
        return self.grid.extent

    @property
    def pixel_size(self) -> float:
        """Image pixel size [A] (0.053 at the paper's sampling)."""
        return self.grid.pixel_size

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.grid.image_shape, self.grid.image_shape

    @property
    def label_shape(self) -> tuple[int, int]:
        return self.grid.label_shape, self.grid.label_shape

    @property
    def label_pixel_size(self) -> float:
        """Label grid pixel size [A] (0.212), that of the estimate and of the true depth map."""
        return self.pixel_size * self.label_factor

    # ----------------------------------------------------------------- model

    @property
    def model(self):
        """The (inference-optimised) depth model, loaded on first use."""
        if self._model is None:
            from segdepth.learn.inference import load_default_model

            self._model, self._card = load_default_model()
        if hasattr(self._model, "config") and not hasattr(self._model, "inference_layout"):
            from segdepth.learn.model import optimise_for_inference

            self._model = optimise_for_inference(self._model)  # once, not on every prediction
        return self._model

    @property
    def card(self) -> dict:
        self.model  # noqa: B018 - loads the default model and its card
        return self._card

    # ---------------------------------------------------------------- stages

    def particle_spec(self, surface: str, thickness: int, vacancy: float):
        """The particle of outline ``surface``: geometry from ``(seed, outline)``, bulk ``thickness``, O ``vacancy``.

        No roughness: away from the wedge-shaped edges every column has ``thickness`` atoms (less
        its vacancies).
        """
        if surface not in OUTLINES:
            raise ValueError(f"surface must be one of {OUTLINES}, got {surface!r}")
        check_int(thickness, "thickness", maximum=MAX_ATOMS)
        if not 0.0 <= vacancy <= 1.0:
            raise ValueError(f"vacancy must be within 0-1, got {vacancy!r}")
        rng = np.random.default_rng([self.seed, OUTLINES.index(surface)])
        spec = random_particle_spec((self.extent, self.extent), rng=rng, surfaces=(surface,),
                                    thickness_range=(int(thickness), int(thickness)), vacuum=self.vacuum)
        return replace(spec, vacancy_rate=float(vacancy), roughness=0.0)

    def _particle(self, key):
        """(structure, exit wave, true label maps) of ``key = (surface, thickness, vacancy)``: multislice on a miss."""

        def make():
            surface, thickness, vacancy = key
            spec = self.particle_spec(surface, thickness, vacancy)
            structure = build_particle(spec, rng=np.random.default_rng([self.seed, OUTLINES.index(surface), 1]))
            t0 = time.perf_counter()
            wave = simulate_exit_wave(structure, gpts=self.gpts, sampling=self.sampling, energy=self.microscope.energy)
            self.calls["multislice"] += 1
            maps = make_label_maps(structure.column_x, structure.column_y, structure.column_Z, structure.column_count,
                                   shape=self.label_shape, pixel_size=self.label_pixel_size)
            self._timing["multislice"] = time.perf_counter() - t0
            return structure, wave, maps

        return self._particles.get(key, make)

    def _clean(self, key, lens_key):
        """Clean image of particle ``key`` through lens ``lens_key = (overfocus, focal_spread)``."""

        def make():
            _, wave, _ = self._particle(key)
            overfocus, spread = lens_key
            t0 = time.perf_counter()
            image = image_exit_wave(wave, overfocus, microscope=lens_for(spread, self.microscope),
                                    binning=self.binning)[0]
            self.calls["image"] += 1
            self._timing["image"] = time.perf_counter() - t0
            return np.clip(image, 0.0, None)

        return self._images.get((key, lens_key), make)

    # ------------------------------------------------------------------ view

    def view(self, surface: str = "flat", thickness: int = 6, vacancy: float = 0.0, overfocus: float = 50.0,
             focal_spread: float = 15.0, lam: float = 2.5, noise_seed: int = 0) -> xr.Dataset:
        """One noisy image of a particle, the model's estimate on it and the truth.

        Parameters
        ----------
        surface : str
            Outline family, one of :data:`segdepth.physics.structures.OUTLINES`.
        thickness : int
            Bulk thickness [atoms per column], 1-10.
        vacancy : float
            O vacancy rate, 0-1.
        overfocus : float
            Overfocus C10 > 0 [A] (the paper's defocus 1-9 nm is 10-90 A).
        focal_spread : float
            Standard deviation of the focal spread [A] (partial temporal coherence; 0: none).
        lam : float
            Dose: electrons per image pixel (0.053 A) in vacuum.
        noise_seed : int
            Seed of the shot noise (with the explorer's ``seed``).

        Returns
        -------
        xarray.Dataset
            ``noisy``, ``clean`` (y, x) on the image grid [vacuum = 1]; ``depth_true``, ``estimate``
            (uint8 atoms, 0 = background) and ``confidence`` (label_y, label_x) on the 0.212 A label
            grid; the column table ``column_x``, ``column_y``, ``column_Z``, ``column_true``,
            ``column_estimate`` (column). Attributes: the parameters, ``column_exact``,
            ``column_within_one``, ``column_exact_Ce``, ``column_exact_O``, ``n_columns``,
            ``computed`` (the stages that ran: ``multislice``, ``image``, ``predict``), their
            times ``time_<stage>`` and ``time_total`` [s], and ``warnings`` (e.g. the model's dose warning).
        """
        t_start = time.perf_counter()
        self._timing: dict[str, float] = {}
        thickness, noise_seed = int(thickness), int(noise_seed)
        check_int(noise_seed, "noise_seed", minimum=0)
        check_lambda(lam)
        if not (np.isfinite(overfocus) and overfocus > 0):
            raise ValueError(f"overfocus must be a positive number of A, got {overfocus!r}")
        key = (str(surface), thickness, round(float(vacancy), 6))
        lens_key = (round(float(overfocus), 6), round(float(focal_spread), 6))
        lens_for(lens_key[1])  # validate before any work
        before = dict(self.calls)
        structure, _, maps = self._particle(key)
        clean = self._clean(key, lens_key)

        model, card = self.model, self.card
        t0 = time.perf_counter()
        noisy = poisson_noise(clean, float(lam), rng=np.random.default_rng([self.seed, noise_seed, 7]))
        from segdepth.learn.inference import predict

        with warnings.catch_warnings(record=True) as caught, _torch_threads(self.threads):
            warnings.simplefilter("always")
            result = predict(noisy, model, card, pixel_size=self.pixel_size, lam=float(lam))
        self.calls["predict"] += 1
        self._timing["predict"] = time.perf_counter() - t0
        estimate = result["depth"].values[0]
        confidence = result["confidence"].values[0]
        if estimate.shape != self.label_shape:  # pragma: no cover - a model with another output grid
            raise ValueError(f"the model's output grid {estimate.shape} is not the label grid {self.label_shape}")

        ly = lx = label_coordinates(self.label_shape[0], self.label_pixel_size)
        y = x = label_coordinates(self.image_shape[0], self.pixel_size)
        pred_counts = column_counts(estimate, structure.column_x, structure.column_y, lx, ly)
        acc = column_count_accuracy(pred_counts, structure.column_count, structure.column_Z)
        computed = [k for k in ("multislice", "image", "predict") if self.calls[k] > before[k]]
        timing = {f"time_{k}": float(self._timing.get(k, 0.0)) for k in ("multislice", "image", "predict")}
        attrs = {
            "surface": key[0], "thickness": thickness, "vacancy": key[2], "overfocus": lens_key[0],
            "focal_spread": lens_key[1], "lam": float(lam), "noise_seed": noise_seed, "seed": self.seed,
            "pixel_size": self.pixel_size, "label_pixel_size": self.label_pixel_size,
            "column_exact": float(acc["exact_all"]), "column_within_one": float(acc["within_one_all"]),
            "column_exact_Ce": float(acc["exact_Ce"]), "column_exact_O": float(acc["exact_O"]),
            "n_columns": int(acc["n_all"]), "computed": " ".join(computed), **timing,
            "warnings": " | ".join(str(w.message) for w in caught),
        }
        img = {"units": "vacuum = 1"}
        atoms = {"units": "atoms"}
        ds = xr.Dataset(
            {
                "noisy": (("y", "x"), noisy, {**img, "long_name": f"noisy image, lambda = {float(lam):g}"}),
                "clean": (("y", "x"), clean.astype(np.float32), {**img, "long_name": "clean image"}),
                "depth_true": (("label_y", "label_x"), maps["depth"], {**atoms, "long_name": "true depth"}),
                "estimate": (("label_y", "label_x"), estimate, {**atoms, "long_name": "estimated depth"}),
                "confidence": (("label_y", "label_x"), confidence, {"long_name": "confidence max F(y)"}),
                "column_x": ("column", structure.column_x, {"units": "A"}),
                "column_y": ("column", structure.column_y, {"units": "A"}),
                "column_Z": ("column", structure.column_Z),
                "column_true": ("column", structure.column_count, atoms),
                "column_estimate": ("column", pred_counts, {**atoms, "long_name": "estimate at the centre (-1: off)"}),
            },
            coords={
                "y": ("y", y, {"units": "A"}), "x": ("x", x, {"units": "A"}),
                "label_y": ("label_y", ly, {"units": "A"}), "label_x": ("label_x", lx, {"units": "A"}),
            },
            attrs=attrs,
        )
        ds.attrs["time_total"] = time.perf_counter() - t_start
        self.last_view = ds
        return ds

    def figure(self, view: xr.Dataset | None = None):
        """:func:`plot_view` of ``view`` (default: the last one)."""
        view = self.last_view if view is None else view
        if view is None:
            raise ValueError("no view yet: call view() first")
        return plot_view(view)

    # --------------------------------------------------------------- widgets

    def widgets(self, **initial):
        """The ipywidgets UI: a dropdown and sliders (:data:`CONTROLS`), the figure (a PNG) and a status line.

        ``initial`` sets control values (names of :data:`CONTROLS`). Every change of a control calls
        :meth:`view` and redraws (sliders update on release). The controls are also in
        :attr:`controls`; the figure and status widgets in ``self.image_widget``, ``self.status_widget``.
        Returns the ``ipywidgets.VBox`` (the first view is computed before it returns).
        """
        import ipywidgets as w

        unknown = set(initial) - set(CONTROLS)
        if unknown:
            raise ValueError(f"unknown controls {sorted(unknown)}; expected names of {list(CONTROLS)}")
        style = {"description_width": "initial"}
        controls = {}
        for name, (kind, default, lo, hi, step, label) in CONTROLS.items():
            value = initial.get(name, default)
            common = dict(description=label, style=style, continuous_update=False)
            if kind == "dropdown":
                controls[name] = w.Dropdown(options=list(OUTLINES), value=value, description=label, style=style)
            elif kind == "int" and name == "noise_seed":
                controls[name] = w.BoundedIntText(value=int(value), min=lo, max=hi, description=label, style=style)
            elif kind == "int":
                controls[name] = w.IntSlider(value=int(value), min=lo, max=hi, step=step, **common)
            elif kind == "float":
                controls[name] = w.FloatSlider(value=float(value), min=lo, max=hi, step=step, **common)
            else:
                controls[name] = w.FloatLogSlider(value=float(value), base=10, min=math.log10(lo), max=math.log10(hi),
                                                  step=step, readout_format=".3g", **common)
        image = w.Image(format="png", layout=w.Layout(max_width="900px"))
        status = w.HTML()
        canvas: list[ViewFigure] = []

        def update(change=None):
            values = {k: c.value for k, c in controls.items()}
            status.value = "<i>computing...</i>"
            try:
                view = self.view(**values)
            except Exception as exc:  # show it in the app instead of losing it in the kernel log
                status.value = f"<b>error</b>: {type(exc).__name__}: {exc}"
                return
            t0 = time.perf_counter()
            if not (canvas and canvas[0].update(view)):
                canvas[:] = [ViewFigure(view)]
            image.value = canvas[0].png()
            status.value = _summary_html(view, time.perf_counter() - t0)

        for c in controls.values():
            c.observe(update, names="value")
        update()
        self.controls, self.image_widget, self.status_widget = controls, image, status
        particle = w.VBox([w.HTML("<b>particle</b>"), controls["surface"], controls["thickness"], controls["vacancy"]])
        lens = w.VBox([w.HTML("<b>lens</b>"), controls["overfocus"], controls["focal_spread"]])
        dose = w.VBox([w.HTML("<b>dose</b>"), controls["lam"], controls["noise_seed"]])
        return w.VBox([w.HBox([particle, lens, dose]), image, status])

    def show(self, **initial) -> None:
        """Display :meth:`widgets` (in Jupyter or Voila; headless, the display is a text placeholder)."""
        from IPython.display import display

        display(self.widgets(**initial))


def _summary_html(view: xr.Dataset, draw: float) -> str:
    a = view.attrs
    times = ", ".join(f"{k} {a[f'time_{k}']:.2f} s" for k in a["computed"].split()) or "nothing"
    warn = f"<br><span style='color:#a60'>{a['warnings']}</span>" if a["warnings"] else ""
    return (f"columns exact <b>{a['column_exact']:.0%}</b>, within one {a['column_within_one']:.0%} "
            f"(Ce {a['column_exact_Ce']:.0%}, O {a['column_exact_O']:.0%}; {a['n_columns']} columns). "
            f"Computed: {times}; view {a['time_total']:.2f} s, figure {draw:.2f} s.{warn}")


def _extent(x, y) -> list[float]:
    dx = float(x[1] - x[0]) if len(x) > 1 else 1.0
    dy = float(y[1] - y[0]) if len(y) > 1 else 1.0
    return [float(x[0]) - dx / 2, float(x[-1]) + dx / 2, float(y[-1]) + dy / 2, float(y[0]) - dy / 2]


def _limits(noisy: np.ndarray) -> tuple[float, float]:
    lo, hi = (float(v) for v in np.percentile(noisy, [0.5, 99.5]))
    return lo, hi if hi > lo else lo + 1.0


def _titles(view: xr.Dataset) -> tuple[list[str], str]:
    a = view.attrs
    panels = [f"noisy image, lambda = {a['lam']:.3g} e/px",
              f"estimate: {a['column_exact']:.0%} of {a['n_columns']} columns exact", "confidence max F(y)", "truth"]
    return panels, (f"{a['surface']}, {a['thickness']} atoms, O vacancies {a['vacancy']:.0%}; overfocus "
                    f"{a['overfocus']:g} A, focal spread {a['focal_spread']:g} A")


class ViewFigure:
    """The four-panel figure of a view, redrawn in place for the next view of the same grid.

    The layout is computed once (constrained layout on the first draw) and then frozen, so a redraw
    only replaces the pixels and the titles.
    """

    def __init__(self, view: xr.Dataset, *, figsize=(10.0, 9.0)):
        from matplotlib.figure import Figure

        from segdepth.apps.plotting import depth_cmap

        fig = Figure(figsize=figsize, layout="constrained")
        axes = fig.subplots(2, 2, sharex=True, sharey=True)
        cmap, norm = depth_cmap()
        img_ext = _extent(view.x.values, view.y.values)
        lab_ext = _extent(view.label_x.values, view.label_y.values)
        lo, hi = _limits(view.noisy.values)
        self.images = [
            axes[0, 0].imshow(view.noisy.values, cmap="gray", vmin=lo, vmax=hi, extent=img_ext),
            axes[0, 1].imshow(view.estimate.values, cmap=cmap, norm=norm, extent=lab_ext, interpolation="nearest"),
            axes[1, 0].imshow(view.confidence.values, cmap="magma", vmin=0, vmax=1, extent=lab_ext),
            axes[1, 1].imshow(view.depth_true.values, cmap=cmap, norm=norm, extent=lab_ext, interpolation="nearest"),
        ]
        for ax in axes[1]:
            ax.set_xlabel("x [A]")
        for ax in axes[:, 0]:
            ax.set_ylabel("y [A]")
        fig.colorbar(self.images[1], ax=axes[:, 1].tolist(), ticks=range(11), shrink=0.6, label="atoms per column")
        fig.colorbar(self.images[2], ax=axes[1, 0], shrink=0.8)
        self.fig, self.axes, self.shape = fig, axes.ravel(), (view.sizes["y"], view.sizes["label_y"])
        self._frozen = False
        self._titles(view)

    def _titles(self, view: xr.Dataset) -> None:
        panels, title = _titles(view)
        for ax, text in zip(self.axes, panels, strict=True):
            ax.set_title(text)
        self.fig.suptitle(title)

    def update(self, view: xr.Dataset) -> bool:
        """Show ``view``; ``False`` (and nothing changed) when its grids differ from the figure's."""
        if (view.sizes["y"], view.sizes["label_y"]) != self.shape:
            return False
        noisy, estimate, confidence, truth = self.images
        noisy.set_data(view.noisy.values)
        noisy.set_clim(*_limits(view.noisy.values))
        estimate.set_data(view.estimate.values)
        confidence.set_data(view.confidence.values)
        truth.set_data(view.depth_true.values)
        self._titles(view)
        return True

    def png(self, *, dpi: int = 72) -> bytes:
        """The figure as PNG bytes; the first call fixes the layout for the later ones."""
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})
        if not self._frozen:
            self.fig.set_layout_engine("none")
            self._frozen = True
        return buf.getvalue()


def plot_view(view: xr.Dataset, *, figsize=(10.0, 9.0)):
    """Four panels of a view: the noisy image, the estimate, its confidence and the true depth.

    Returns a ``matplotlib.figure.Figure`` not registered with pyplot (nothing accumulates; in a
    notebook ``display(fig)`` shows it).
    """
    return ViewFigure(view, figsize=figsize).fig


def figure_png(view: xr.Dataset, *, dpi: int = 72) -> bytes:
    """:func:`plot_view` as PNG bytes."""
    return ViewFigure(view).png(dpi=dpi)
