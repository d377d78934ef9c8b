"""Low-quality simulation on the real fixtures: grid geometry, alignment, noise level, seeds, contrast."""
import json

import numpy as np
import pytest

from IQTEnhanceApps.cli import main
from IQTEnhanceLib.errors import InputError
from IQTEnhanceLib.interpolation import upsample
from IQTEnhanceLib.simulate import (SimulationParameters, apply_contrast, degrade_array, sample_parameters,
                                    simulate, slice_profile_matrix, tissue_memberships)
from IQTEnhanceLib.volume import Volume, array_axis, read_volume, write_volume


def oblique(volume, spacing=(0.9, 1.1, 1.3), origin=(12.5, -40.0, 7.25), angle=0.3):
    """The same voxels with a non-trivial geometry: anisotropic spacing, an offset origin and a
    rotation, so that geometry bugs (axis order, direction columns) cannot cancel out."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return Volume(volume.array, spacing, origin, rot)


def slabs(array, f, ax):
    """HQ array cut into whole slabs along numpy axis ``ax``: (M, f, ...) with the thick axis first."""
    a = np.moveaxis(array, ax, 0)
    m = a.shape[0] // f
    return a[: m * f].reshape(m, f, *a.shape[1:])


@pytest.mark.parametrize("axis", ["i", "j", "k"])
def test_lq_grid_spacing_and_slab_centres(colin, axis):
    hq = oblique(colin[0])
    f = 4
    lq, record = simulate(hq, factor=f, axis=axis, snr=None)
    a = "ijk".index(axis)
    ax = array_axis(axis)
    expected_spacing = hq.spacing.copy()
    expected_spacing[a] *= f
    np.testing.assert_allclose(lq.spacing, expected_spacing)
    np.testing.assert_allclose(lq.direction, hq.direction)
    assert lq.array.shape[ax] == hq.array.shape[ax] // f
    # each LQ voxel's centre is the centre of the HQ slab it averages (no half-voxel shift)
    for m in (0, 1, lq.array.shape[ax] - 1):
        ijk = np.array([3.0, 5.0, 2.0])
        ijk[a] = m
        hq_ijk = [np.array(ijk) for _ in range(f)]
        for n in range(f):
            hq_ijk[n][a] = m * f + n
        slab_centre = np.mean([hq.physical_point(p) for p in hq_ijk], axis=0)
        np.testing.assert_allclose(lq.physical_point(ijk), slab_centre, atol=1e-9)
    assert record["lq_geometry"]["spacing"] == lq.spacing.tolist()


@pytest.mark.parametrize("axis", ["i", "j", "k"])
def test_box_profile_lq_is_the_slab_mean(colin, axis):
    hq, _ = colin
    f = 4
    lq, _ = simulate(hq, factor=f, axis=axis, snr=None, profile="box")
    ax = array_axis(axis)
    expected = slabs(hq.array.astype(np.float64), f, ax).mean(axis=1)
    np.testing.assert_allclose(np.moveaxis(lq.array, ax, 0), expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("profile", ["box", "gaussian"])
@pytest.mark.parametrize("axis", ["i", "j", "k"])
def test_lq_resampled_onto_hq_lines_up_without_shift(colin, axis, profile):
    """Nearest and linear up-sampling of a noiseless LQ correlate best with the HQ at zero shift,
    with the correlation peak within a fraction of a voxel of zero."""
    hq, _ = colin
    f = 4
    lq, _ = simulate(hq, factor=f, axis=axis, snr=None, profile=profile)
    ax = array_axis(axis)
    for method in ("nearest", "trilinear"):
        up = upsample(lq, f, axis, method).array
        n = up.shape[ax]
        ref = np.take(hq.array, np.arange(n), axis=ax)
        inner = [slice(None)] * 3
        inner[ax] = slice(f, n - f)
        scores = {}
        for shift in range(-2, 3):
            moved = np.roll(up, shift, axis=ax)
            scores[shift] = np.corrcoef(moved[tuple(inner)].ravel(), ref[tuple(inner)].ravel())[0, 1]
        assert max(scores, key=scores.get) == 0, (method, scores)
        # sub-voxel peak of a parabola through shifts -1, 0, 1: measured 0.01-0.11 HQ voxels on this
        # crop (image content is not symmetric); the half-voxel shift this guards against gives 0.5
        peak = (scores[-1] - scores[1]) / (2 * (scores[-1] + scores[1] - 2 * scores[0]))
        assert abs(peak) < 0.2, (method, peak, scores)


def test_upsampled_lq_grid_is_the_hq_grid(colin):
    hq = oblique(colin[0])
    for axis in "ijk":
        lq, _ = simulate(hq, factor=4, axis=axis, snr=None)
        up = upsample(lq, 4, axis, "trilinear")
        np.testing.assert_allclose(up.spacing, hq.spacing, atol=1e-12)
        np.testing.assert_allclose(up.origin, hq.origin, atol=1e-9)
        np.testing.assert_allclose(up.direction, hq.direction, atol=1e-12)


def test_slices_beyond_whole_slabs_are_dropped(colin):
    hq, _ = colin  # 48 slices along k
    lq, _ = simulate(hq, factor=5, axis="k", snr=None, profile="box")
    assert lq.array.shape[0] == 9  # 45 of 48 slices make whole slabs
    np.testing.assert_allclose(lq.array[-1], hq.array[40:45].mean(axis=0), rtol=1e-5, atol=1e-3)


def test_noise_level_matches_requested_snr(colin):
    hq, mask = colin
    for snr in (10.0, 20.0, 40.0):
        noisy, record = simulate(hq, factor=4, axis="k", snr=snr, seed=1, mask=mask)
        clean, _ = simulate(hq, factor=4, axis="k", snr=None, mask=mask)
        bright = clean.array > 5 * record["noise_sigma"]  # Rician ≈ Gaussian there
        sigma = float(np.std((noisy.array - clean.array)[bright]))
        measured = float(clean.array.mean()) / sigma  # the fixture's mask is all brain
        assert abs(measured / snr - 1) < 0.10, (snr, measured)
        assert abs(sigma / record["noise_sigma"] - 1) < 0.05


def test_rician_background_follows_rayleigh(colin):
    """Where the signal is 0 the magnitude noise is Rayleigh: mean σ·sqrt(π/2)."""
    hq = colin[0].with_array(np.zeros_like(colin[0].array))
    hq.array[:24] = 500.0
    lq, _, sigma = degrade_array(hq.array, SimulationParameters(factor=4, axis="k", snr=20, profile="box"),
                                 mask=hq.array > 0, return_clean=True)
    background = lq[8:]  # LQ slices made of zero HQ slices only
    assert abs(background.mean() / (sigma * np.sqrt(np.pi / 2)) - 1) < 0.05


def test_seed_reproducibility(colin):
    hq, mask = colin
    a, _ = simulate(hq, factor=4, axis="j", snr=20, seed=7, mask=mask)
    b, _ = simulate(hq, factor=4, axis="j", snr=20, seed=7, mask=mask)
    c, _ = simulate(hq, factor=4, axis="j", snr=20, seed=8, mask=mask)
    np.testing.assert_array_equal(a.array, b.array)
    assert np.abs(a.array - c.array).mean() > 1.0


def test_stochastic_parameters_reproducible_and_in_range():
    p1 = sample_parameters(4, "k", np.random.default_rng(3))
    p2 = sample_parameters(4, "k", np.random.default_rng(3))
    p3 = sample_parameters(4, "k", np.random.default_rng(4))
    assert p1 == p2 and p1 != p3
    assert 10 <= p1.snr <= 40 and 3.2 <= p1.thickness <= 4.8
    assert all(0.85 <= c <= 1.15 for c in p1.contrast)


def test_contrast_factor_raises_bright_tissue(colin):
    hq, mask = colin
    m = mask.array > 0
    p = tissue_memberships(hq.array, m)
    means = [float(hq.array[p[c] > 0.5].mean()) for c in range(3)]
    assert means[0] < means[1] < means[2]  # dark < middle < bright (CSF < GM < WM on T1w)
    raised = apply_contrast(hq.array, m, (1.0, 1.0, 1.2))
    wm = p[2] > 0.9
    ratio = raised[wm] / hq.array[wm]
    assert 1.17 < float(np.median(ratio)) <= 1.2 + 1e-6
    csf = p[0] > 0.9
    assert abs(float(np.median(raised[csf] / hq.array[csf])) - 1.0) < 0.01
    # end to end: white matter in the LQ gets ~20% brighter, CSF does not change
    lq0, _ = simulate(hq, factor=4, axis="k", snr=None, mask=mask, profile="box")
    lq1, _ = simulate(hq, factor=4, axis="k", snr=None, mask=mask, profile="box", contrast=(1.0, 1.0, 1.2))
    wm_lq = slabs(p[2], 4, 0).min(axis=1) > 0.9
    assert 1.17 < float(np.median(lq1.array[wm_lq] / lq0.array[wm_lq])) <= 1.2 + 1e-6


def test_box_thickness_and_gaussian_fwhm():
    w = slice_profile_matrix(40, 4, "box")
    np.testing.assert_allclose(w[2, 8:12], 0.25)
    assert w[2].sum() == pytest.approx(1.0) and np.count_nonzero(w[2]) == 4
    wide = slice_profile_matrix(40, 4, "box", fwhm=6)  # 6 voxels: the slab plus one either side
    np.testing.assert_allclose(wide[2, 7:13], 1 / 6)
    g = slice_profile_matrix(200, 4, "gaussian", fwhm=8)[20]  # centre 81.5
    half = g.max() / 2
    x = np.arange(200)
    above = x[g >= half]
    assert 7 <= above[-1] - above[0] + 1 <= 9  # FWHM 8 voxels
    assert np.sum(g * x) == pytest.approx(81.5, abs=1e-6)  # centred on the slab


def test_bad_parameters():
    for bad in (dict(factor=1), dict(factor=2.5), dict(axis="x"), dict(snr=-1), dict(profile="sinc"),
                dict(contrast=(1, 1)), dict(thickness=0)):
        with pytest.raises(InputError):
            SimulationParameters(**bad).validate()


def test_cli_sidecar_holds_every_parameter(colin, tmp_path):
    hq_path = tmp_path / "hq.nii.gz"
    write_volume(colin[0], hq_path)
    lq_path = tmp_path / "lq.nii.gz"
    args = ["simulate", str(hq_path), str(lq_path), "--factor", "3", "--axis", "j", "--snr", "15", "--seed", "5",
            "--profile", "box", "--thickness", "3.5", "--contrast", "0.9", "1.0", "1.1", "-q"]
    assert main(args) == 0
    record = json.loads((tmp_path / "lq.json").read_text())
    sim = record["simulation"]
    assert sim == {"factor": 3, "axis": "j", "snr": 15.0, "profile": "box", "thickness": 3.5,
                   "contrast": [0.9, 1.0, 1.1], "seed": 5, "thickness_fwhm_hq_voxels": 3.5}
    assert record["noise"] == "rician" and record["noise_sigma"] > 0 and record["mode"] == "fixed"
    lq = read_volume(lq_path)
    assert record["lq_geometry"]["size_ijk"] == list(lq.size_ijk)
    # the sidecar reproduces the volume
    again, _ = simulate(colin[0], SimulationParameters(**{k: v for k, v in sim.items()
                                                           if k != "thickness_fwhm_hq_voxels"}))
    np.testing.assert_allclose(again.array, lq.array, rtol=1e-6)

    # stochastic mode: the same seed gives the same parameters and volume, another seed others
    outs = []
    for seed, name in ((11, "s1"), (11, "s2"), (12, "s3")):
        path = tmp_path / f"{name}.nrrd"
        assert main(["simulate", str(hq_path), str(path), "--stochastic", "--seed", str(seed), "-q"]) == 0
        outs.append((json.loads((tmp_path / f"{name}.json").read_text()), read_volume(path).array))
    assert outs[0][0]["simulation"] == outs[1][0]["simulation"]
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert outs[0][0]["simulation"] != outs[2][0]["simulation"]
    assert outs[0][0]["mode"] == "stochastic" and outs[0][0]["ranges"]["snr"] == [10.0, 40.0]
    assert outs[0][0]["stochastic_seed"] == 11


def test_lowfield_contrast_lowers_the_wm_gm_difference_by_the_drawn_amount(colin):
    """The low-field T1w model on a real brain: the GM/WM and GM/CSF differences of the tissue
    classes shrink by exactly the drawn fractions, WM/GM ratio falls, and the sidecar record says so."""
    from IQTEnhanceLib.lowfield import LowFieldRanges, class_means, lowfield_parameters
    from IQTEnhanceLib.simulate import apply_contrast, tissue_memberships

    image, mask = colin
    brain = mask.array > 0
    for seed in (0, 1, 2):
        drawn = LowFieldRanges().draw(np.random.default_rng(seed))
        params, record = lowfield_parameters(image.array, brain, drawn, 4, "k", seed=seed)
        memberships = tissue_memberships(image.array.astype(np.float32), brain)
        before = class_means(image.array, memberships, brain)
        after = class_means(apply_contrast(image.array, brain, params.contrast), memberships, brain)
        assert (after[2] - after[1]) / (before[2] - before[1]) == pytest.approx(1.0 - drawn.gm_wm, abs=2e-3)
        assert (after[1] - after[0]) / (before[1] - before[0]) == pytest.approx(1.0 - drawn.csf_gm, abs=2e-3)
        assert record["wm_gm_ratio_lq"] < record["wm_gm_ratio_hq"]
        assert record["gm_wm"] == drawn.gm_wm and record["snr_wm"] == drawn.snr_wm


def test_cli_simulates_lowfield_and_records_it(colin, tmp_path, capsys):
    from IQTEnhanceApps.cli import main
    from IQTEnhanceLib.volume import write_volume

    image, mask = colin
    write_volume(image, tmp_path / "hq.nii.gz")
    write_volume(mask, tmp_path / "mask.nii.gz")
    assert main(["simulate", str(tmp_path / "hq.nii.gz"), str(tmp_path / "lq.nii.gz"), "--mask",
                 str(tmp_path / "mask.nii.gz"), "--lowfield", "--gm-wm-loss", "0.4", "--snr-wm", "12", "-q"]) == 0
    record = json.loads((tmp_path / "lq.json").read_text())
    assert record["mode"] == "lowfield" and record["lowfield"]["gm_wm"] == 0.4 and record["lowfield"]["snr_wm"] == 12
    assert 0.0 <= record["lowfield"]["csf_gm"] <= 0.3     # drawn from the model's range
    assert record["simulation"]["contrast"] != [1.0, 1.0, 1.0]
    assert main(["simulate", str(tmp_path / "hq.nii.gz"), str(tmp_path / "lq2.nii.gz"), "--lowfield",
                 "--snr", "20", "-q"]) == 2
    assert "--lowfield sets the contrast and the SNR" in capsys.readouterr().err


def test_training_ranges_can_draw_low_field_realizations(icbm_t1):
    """A share of training realizations drawn from the low-field model: their LQ loses WM/GM contrast
    as drawn (recorded per realization), the others are plain draws, and with the share at 0 the draws
    are exactly as before the option existed."""
    from IQTEnhanceLib.lowfield import LowFieldRanges
    from IQTEnhanceLib.simulate import ParameterRanges
    from IQTEnhanceLib.training import make_training_pairs

    image, mask = icbm_t1
    ranges = ParameterRanges(lowfield_share=0.5, lowfield=LowFieldRanges(gm_wm=(0.3, 0.4), csf_gm=(0.0, 0.1),
                                                                         snr_wm=(15.0, 20.0)))
    pairs = make_training_pairs([image], [mask], factor=4, seed=3, simulation=ranges, axes=("k",))
    reals = pairs.fixed(6)
    low = [r.params["lowfield"] for r in reals if "lowfield" in r.params]
    assert 0 < len(low) < 6
    for rec in low:
        assert 0.3 <= rec["gm_wm"] <= 0.4 and 15 <= rec["snr_wm"] <= 20
        # the GM/WM difference shrinks by the drawn share (the ratio's excess over 1 a little more:
        # the brighter GM divides it)
        kept = (rec["wm_gm_ratio_lq"] - 1) / (rec["wm_gm_ratio_hq"] - 1)
        assert 0.85 * (1 - rec["gm_wm"]) < kept <= (1 - rec["gm_wm"]) * 1.001
    assert pairs.simulation_record["lowfield_share"] == 0.5 and pairs.simulation_record["lowfield"]["gm_wm"] == (0.3, 0.4)
    plain = make_training_pairs([image], [mask], factor=4, seed=3, simulation=ParameterRanges(), axes=("k",))
    again = make_training_pairs([image], [mask], factor=4, seed=3,
                                simulation=ParameterRanges(lowfield_share=0.0), axes=("k",))
    assert [r.params for r in plain.fixed(2)] == [r.params for r in again.fixed(2)]
