"""After training: does the model beat linear interpolation on data it never saw?

The validation loss that selects the weights is measured on fixed patches through the bare network.
This check runs the whole enhancement path instead (the model file, intensity normalisation of the
whole LQ volume, sliding-window tiles, blending), on a held-out volume when training had several
(the last one is then kept out of training), otherwise on the held-out validation cubes of the
training volume.  A model that does not beat trilinear interpolation there gets a loud warning and
``training["heldout_check"]["beats_linear"] = False`` in its file; every enhance with it repeats
the warning.

The check also enhances the same LQ normalised with its intensity scale ×0.7 and ×1.4.  A scan is
normalised by the 99th percentile of its head, which depends on what else the field of view holds:
Colin27's bright scalp puts its brain at 0.71× the training template's normalised intensity, and the
IQT-DL trained with ±10% intensity jitter scored Colin27 NRMSE 0.0593 as normalised against 0.0554
with the template's scale, while its validation (patches of the template) could not see it.  A model
more than 5% worse at either scale gets a warning (``robust_to_normalisation`` False in its file).
"""
from __future__ import annotations

import numpy as np

from ..normalize import intensity_scale
from ..simulate import SimulationParameters, foreground_mask
from ..volume import Volume

# the middle of the training ranges: the check asks "is this model usable", not "how robust"
CHECK_SNR = 20.0
CHECK_AXIS = "k"
NORMALISATION_FACTORS = (0.7, 1.4)   # the LQ's intensity scale × these: 1.43× brighter, 0.71× darker
NORMALISATION_TOLERANCE = 1.05


def heldout_check(model, hq: np.ndarray, region: np.ndarray, where: str, seed: int = 0) -> dict:
    """NRMSE of ``model`` and of trilinear interpolation inside ``region`` (bool, HQ grid) of the HQ
    array ``hq``, enhancing its simulated LQ (×factor along k, SNR 20) through :func:`..api.enhance`."""
    from .. import api, metrics, simulate

    f = int(model.factor)
    keep = hq.shape[0] // f * f          # axis k is array axis 0
    hq_c = np.asarray(hq, dtype=np.float32)[:keep]
    region = region[:keep]
    params = SimulationParameters(factor=f, axis=CHECK_AXIS, snr=CHECK_SNR, seed=seed)
    lq, _ = simulate.simulate(Volume(hq_c, (1.0, 1.0, 1.0)), params)

    def score(method, **options):
        out = api.enhance(lq, method, model=model if method == model.method else None, axis=CHECK_AXIS,
                          device="cpu", **options)
        return metrics.nrmse(out.volume.array[:keep], hq_c, region)

    own, trilinear = score(model.method), score("trilinear")
    ratio = own / max(trilinear, 1e-12)
    scale = intensity_scale(lq.array)
    rescaled = {f: score(model.method, intensity_scale=scale * f) for f in NORMALISATION_FACTORS}
    worst = max(rescaled.values()) / max(own, 1e-12)
    return {"where": where, "voxels": int(region.sum()), "snr": CHECK_SNR, "axis": CHECK_AXIS,
            "nrmse": round(own, 5), "nrmse_trilinear": round(trilinear, 5),
            "ratio_to_trilinear": round(ratio, 4), "beats_linear": bool(ratio < 1.0),
            "nrmse_rescaled": {f"{f:g}": round(v, 5) for f, v in rescaled.items()},
            "normalisation_ratio": round(worst, 4), "robust_to_normalisation": bool(worst <= NORMALISATION_TOLERANCE)}


def heldout_region(hq: np.ndarray, brain: np.ndarray, cubes=None, cube_size: int = 0) -> np.ndarray:
    """The head (foreground or brain mask), within the held-out ``cubes`` when given."""
    head = foreground_mask(hq) | brain
    if cubes is None:
        return head
    region = np.zeros(hq.shape, dtype=bool)
    for a, b, c in cubes:
        region[a:a + cube_size, b:b + cube_size, c:c + cube_size] = True
    return region & head


def normalisation_warning_text(check: dict) -> str:
    rescaled = ", ".join(f"×{f}: {v:.4f}" for f, v in check["nrmse_rescaled"].items())
    return (f"the model depends on the scan's intensity normalisation ({check['where']}: NRMSE {check['nrmse']:.4f} "
            f"as normalised, {rescaled} with the intensity scale changed); scans whose field of view differs from "
            "the training data's may be enhanced worse: train with a wider intensity_jitter")


def warning_text(check: dict) -> str:
    return (f"the model did not beat linear interpolation on held-out data ({check['where']}: NRMSE "
            f"{check['nrmse']:.4f} vs trilinear {check['nrmse_trilinear']:.4f}); its output may be worse than "
            "trilinear interpolation: train longer, or check the training data")
