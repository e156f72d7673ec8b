from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from segdepth.physics.simulation import PAPER_SAMPLING, check_grid, simulate_images
from segdepth.physics.structures import ParticleSpec, Structure

GPTS = 512  # the smallest grid used in tests; sampling stays at the paper's 0.0265 A
EXT = GPTS * PAPER_SAMPLING


def _structure(atoms: Atoms) -> Structure:
    e = np.zeros(0)
    return Structure(atoms, e, e, e.astype(np.uint8), e.astype(np.uint8), ParticleSpec(extent=(EXT, EXT)))


def test_empty_cell_is_one():
    im = simulate_images(_structure(Atoms(cell=[EXT, EXT, 4.0], pbc=True)), [50.0], gpts=GPTS)
    assert im.shape == (1, GPTS // 2, GPTS // 2)
    assert np.allclose(im, 1.0, atol=1e-5)


@pytest.mark.slow
def test_defocus_sign_bright_columns_at_overfocus():
    # a 5-atom Ce column at the cell centre: bright at overfocus (C10 > 0) with C3 < 0
    c = EXT / 2
    atoms = Atoms("Ce5", positions=[(c, c, 3.826 * k) for k in range(5)], cell=[EXT, EXT, 20.0], pbc=True)
    over, under = simulate_images(_structure(atoms), [50.0, -50.0], gpts=GPTS)
    i = GPTS // 4  # pixel holding the column
    centre_over = over[i - 1 : i + 1, i - 1 : i + 1].mean()
    centre_under = under[i - 1 : i + 1, i - 1 : i + 1].mean()
    assert centre_over > 1.2 > centre_under
    # the brightest pixel of the overfocus image is at the column (no axis swap)
    iy, ix = np.unravel_index(np.argmax(over), over.shape)
    assert abs(iy - i) <= 2 and abs(ix - i) <= 2
    # flux is conserved up to aperture losses
    assert 0.9 < over.mean() <= 1.0 + 1e-3


@pytest.mark.parametrize(
    "gpts, sampling, binning, word",
    [
        (512, 0.053, 2, "coarser"),
        (510, PAPER_SAMPLING, 4, "divisible by the binning"),
        (516, PAPER_SAMPLING, 2, "label_factor"),
        (0, PAPER_SAMPLING, 2, "gpts"),
    ],
)
def test_bad_grid(gpts, sampling, binning, word):
    with pytest.raises(ValueError, match=word):
        check_grid(gpts, sampling, binning)


@pytest.mark.slow
def test_bandlimited_imaging_equals_simulate_then_bin():
    """The fast path (lens on the binned grid + exact block-average transfer) gives the paper's numbers."""
    from segdepth.physics.simulation import image_exit_wave, simulate_exit_wave

    rng = np.random.default_rng(3)
    xy = rng.uniform(4.0, EXT - 4.0, (6, 2))
    atoms = Atoms("Ce18O12", positions=[(x, y, 1.0 + 2.0 * k) for k in range(3) for x, y in xy]
                  + [(x + 1.35, y, 1.0 + 2.0 * k) for k in range(2) for x, y in xy], cell=[EXT, EXT, 8.0], pbc=True)
    wave = simulate_exit_wave(_structure(atoms), gpts=GPTS)
    full = image_exit_wave(wave, [20.0, 70.0], method="full")
    fast = image_exit_wave(wave, [20.0, 70.0])
    assert fast.shape == full.shape == (2, GPTS // 2, GPTS // 2)
    contrast = full.std()
    assert contrast > 0.02  # there is an image to compare
    print("max |fast - full|", np.abs(fast - full).max(), "contrast", contrast)
    assert np.abs(fast - full).max() < 1e-4 * contrast  # float32 output
    # the lens ran on a grid smaller than the binned one: 120 (5-smooth) > 2 x 2 k_a x extent = 110
    from segdepth.physics.simulation import _lens_gpts

    k_a = 40e-3 / wave.wavelength
    assert _lens_gpts(2 * k_a, EXT, GPTS // 2) == 120
    assert _lens_gpts(2 * k_a, 2048 * PAPER_SAMPLING, 1024) == 450  # the paper's field: 450^2, not 1024^2
    with pytest.raises(ValueError, match="method"):
        image_exit_wave(wave, [20.0], method="fast")


@pytest.mark.slow
def test_paper_preset_focal_spread_average_is_within_a_percent_of_a_converged_one():
    """The paper preset's 7-sample incoherent defocus average vs 81 samples (same +-3 sigma): < 1 % RMS."""
    from dataclasses import replace

    from segdepth.physics.generate import PRESETS
    from segdepth.physics.simulation import image_exit_wave, simulate_exit_wave

    microscope = PRESETS["paper"].microscope
    assert microscope.defocus_samples == 7 and PRESETS["paper"].n_defocus == 10
    c = EXT / 2
    atoms = Atoms("Ce8O16", positions=[(c + dx, c, 1.9 * k) for k in range(8) for dx in (0.0,)]
                  + [(c + dx, c + 1.35, 1.9 * k) for k in range(8) for dx in (-1.35, 1.35)],
                  cell=[EXT, EXT, 16.0], pbc=True)
    wave = simulate_exit_wave(_structure(atoms), gpts=GPTS)
    images = {n: image_exit_wave(wave, [30.0, 80.0], microscope=replace(microscope, defocus_samples=n))
              for n in (81, 11, 7, 3)}
    error = {n: np.sqrt(np.mean((images[n] - images[81]) ** 2)) / images[81].std() for n in (11, 7, 3)}
    print("RMS error / contrast:", error)
    assert error[7] < 0.01 and error[11] < error[7] < error[3]
