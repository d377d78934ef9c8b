"""After training: does the model beat linear interpolation on data it never saw?

The validation loss that selects the weights is measured on fixed patches through the bare network.
This check runs the whole enhancement path instead (the model file, intensity normalisation of the
whole LQ volume, sliding-window tiles, blending), on a held-out volume when training had several
(the last one is then kept out of training), otherwise on the held-out validation cubes of the
training volume.  A model that does not beat trilinear interpolation there gets a loud warning and
``training["heldout_check"]["beats_linear"] = False`` in its file; every enhance with it repeats
the warning.
"""
from __future__ import annotations

import numpy as np

from ..simulate import SimulationParameters, foreground_mask
from ..volume import Volume

# the middle of the training ranges: the check asks "is this model usable", not "how robust"
CHECK_SNR = 20.0
CHECK_AXIS = "k"


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
    scores = {}
    for method in ("trilinear", model.method):
        out = api.enhance(lq, method, model=model if method == model.method else None, axis=CHECK_AXIS,
                          device="cpu")
        scores[method] = metrics.nrmse(out.volume.array[:keep], hq_c, region)
    ratio = scores[model.method] / max(scores["trilinear"], 1e-12)
    return {"where": where, "voxels": int(region.sum()), "snr": CHECK_SNR, "axis": CHECK_AXIS,
            "nrmse": round(scores[model.method], 5), "nrmse_trilinear": round(scores["trilinear"], 5),
            "ratio_to_trilinear": round(ratio, 4), "beats_linear": bool(ratio < 1.0)}


def heldout_region(hq: np.ndarray, brain: np.ndarray, cubes=None, cube_size: int = 0) -> np.ndarray:
    """The head (foreground or brain mask), within the held-out ``cubes`` when given."""
    head = foreground_mask(hq) | brain
    if cubes is None:
        return head
    region = np.zeros(hq.shape, dtype=bool)
    for a, b, c in cubes:
        region[a:a + cube_size, b:b + cube_size, c:c + cube_size] = True
    return region & head


def warning_text(check: dict) -> str:
    return (f"the model did not beat linear interpolation on held-out data ({check['where']}: NRMSE "
            f"{check['nrmse']:.4f} vs trilinear {check['nrmse_trilinear']:.4f}); its output may be worse than "
            "trilinear interpolation: train longer, or check the training data")
