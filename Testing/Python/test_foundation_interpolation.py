"""Interpolation baselines and the HQ-grid geometry."""
import numpy as np
import pytest

from IQTEnhanceLib.api import enhance
from IQTEnhanceLib.errors import InputError
from IQTEnhanceLib.grid import default_axis, hq_geometry, lq_geometry
from IQTEnhanceLib.interpolation import INTERPOLATION_METHODS, upsample_array
from IQTEnhanceLib.simulate import simulate
from IQTEnhanceLib.volume import Volume


@pytest.mark.parametrize("method", INTERPOLATION_METHODS)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_exact_at_slice_centres(colin, method, axis):
    """With an odd factor an HQ voxel sits at each LQ slice centre (HQ index m*f + (f-1)/2)."""
    f = 3
    lq = colin[0].array[:16, :20, :18].astype(np.float32)
    up = upsample_array(lq, f, axis, method)
    assert up.shape[axis] == lq.shape[axis] * f
    centres = np.take(up, np.arange(lq.shape[axis]) * f + 1, axis=axis)
    np.testing.assert_allclose(centres, lq, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("method", INTERPOLATION_METHODS)
def test_constant_stays_constant(method):
    for m in (1, 2, 3, 9):
        up = upsample_array(np.full((m, 4, 5), 7.5, np.float32), 4, 0, method)
        np.testing.assert_allclose(up, 7.5, rtol=1e-6)


def test_linear_ramp_is_reproduced_between_slice_centres():
    f, m = 4, 10
    lq = np.broadcast_to(np.arange(m, dtype=np.float32)[:, None, None] * 3.0 + 1.0, (m, 3, 3))
    u = (np.arange(m * f) - (f - 1) / 2) / f  # LQ coordinate of each HQ voxel
    inside = (u >= 0) & (u <= m - 1)
    up = upsample_array(lq, f, 0, "trilinear")[:, 1, 1]
    np.testing.assert_allclose(up[inside], 3.0 * u[inside] + 1.0, rtol=1e-5, atol=1e-4)
    # beyond the first/last centre, linear holds the edge value (no overshoot)
    np.testing.assert_allclose(up[~inside & (u < 0)], 1.0)
    # the cubic B-spline reproduces the ramp away from the mirrored edges
    up = upsample_array(lq, f, 0, "bspline")[:, 1, 1]
    middle = (u >= 3) & (u <= m - 4)
    np.testing.assert_allclose(up[middle], 3.0 * u[middle] + 1.0, atol=0.02)


@pytest.mark.parametrize("m", [2, 3, 11])
def test_same_as_scipy_map_coordinates(rng, m):
    """Our 1-D up-sampling equals scipy's general resampler at the HQ voxels' LQ coordinates:
    cubic B-spline with mirror boundaries, linear with constant extension."""
    from scipy import ndimage

    f = 4
    lq = rng.random((m, 4, 5)).astype(np.float32)
    u = (np.arange(m * f) - (f - 1) / 2) / f
    coords = np.meshgrid(u, np.arange(4), np.arange(5), indexing="ij")
    cubic = ndimage.map_coordinates(lq.astype(np.float64), coords, order=3, mode="mirror")
    np.testing.assert_allclose(upsample_array(lq, f, 0, "bspline"), cubic, atol=1e-5)
    linear = ndimage.map_coordinates(lq.astype(np.float64), coords, order=1, mode="nearest")
    np.testing.assert_allclose(upsample_array(lq, f, 0, "trilinear"), linear, atol=1e-6)


def test_nearest_repeats_each_slice():
    lq = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(upsample_array(lq, 3, 2, "nearest"), np.repeat(lq, 3, axis=2))


def test_hq_grid_geometry_is_the_inverse_of_the_lq_grid():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    hq = Volume(np.zeros((40, 30, 20), np.float32), (0.7, 0.8, 1.1), (3.0, -2.0, 5.0), q)
    for axis in "ijk":
        for f in (2, 3, 4, 5):
            g = lq_geometry(hq, f, axis)
            lq = Volume(np.zeros(g["shape"], np.float32), g["spacing"], g["origin"], g["direction"])
            back = hq_geometry(lq, f, axis)
            np.testing.assert_allclose(back["spacing"], hq.spacing, atol=1e-12)
            np.testing.assert_allclose(back["origin"], hq.origin, atol=1e-9)
            assert back["shape"][2 - "ijk".index(axis)] == (hq.shape[2 - "ijk".index(axis)] // f) * f


def test_enhance_interpolation_returns_the_hq_grid(colin):
    hq, _ = colin
    lq, _ = simulate(hq, factor=4, axis="j", snr=None)
    assert default_axis(lq) == "j"
    result = enhance(lq, "bspline")  # factor from the spacing ratio, axis from the largest spacing
    assert result.info["factor"] == 4 and result.info["axis"] == "j"
    assert result.volume.shape == hq.shape
    np.testing.assert_allclose(result.volume.origin, hq.origin, atol=1e-9)
    np.testing.assert_allclose(result.volume.spacing, hq.spacing)
    lq3, _ = simulate(hq, factor=3, axis="k", snr=None)
    assert enhance(lq3, "trilinear").info["factor"] == 3
    with pytest.raises(InputError, match="smaller than the 2"):
        enhance(Volume(np.ones((1, 10, 10), np.float32) + np.arange(10), (1, 1, 4)), "trilinear")
    with pytest.raises(InputError, match="factor"):
        enhance(lq, "trilinear", factor=1)
