"""The apps on top of the three stages: ``segdepth`` command line (:mod:`.cli`), papermill notebook
runner (:mod:`.notebook`) and parameter grids (:mod:`.batch`), figures (:mod:`.plotting`) and
the movie runner/scorer (:mod:`.moviescore`), the interactive explorer (:mod:`.explorer`)."""

from __future__ import annotations

from segdepth._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    ".cli": ["main"], ".notebook": ["run_notebook"], ".batch": ["run_grid"], ".plotting": ["save_figure"],
    ".moviescore": ["run_movie_path", "run_simulated_movie", "score_simulated_movie"],
    ".explorer": ["Explorer"],
})
