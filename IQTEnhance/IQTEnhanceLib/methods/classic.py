"""Classic IQT baselines (Alexander et al., NeuroImage 2017): patch-wise linear regression and a
regression forest, on the residual patch features of :mod:`..features`.

Both work in the canonical frame (thick axis first, intensities divided by the LQ intensity scale):
the feature of an LQ patch is the mean-removed trilinear up-sampling over the HQ region it covers,
the target the HQ patch minus that up-sampling; at inference the predicted residual patches are
averaged over overlaps and added to the up-sampling (:func:`..features.enhance_residual`).

* ``linear``: ridge regression in closed form, the regularisation chosen on a validation split.
* ``forest``: a multi-output regression forest (scikit-learn's extra-trees or random forest for
  training only).  The trees are stored as plain arrays in the model file and evaluated here with
  numpy, so a forest model needs neither pickle nor scikit-learn at inference (pickled
  scikit-learn forests only load reliably in the scikit-learn version that wrote them, and
  unpickling runs code from the file).

Training data: :meth:`..training.TrainingPairs.realize` simulates ``realizations`` LQ versions of
every HQ volume along every training axis (the same order and seeds as ``TrainingPairs.fixed``);
patch pairs are sampled in the brain masks, spread evenly over the realizations.
"""
from __future__ import annotations

import time

import numpy as np

from .. import features
from ..errors import InputError, ModelError
from ..models import ModelFile
from . import MethodOption, MethodSpec

FEATURE = "mean-removed trilinear patch (features.py)"
TARGET = "HQ patch minus trilinear patch"


# -- options -------------------------------------------------------------------------------------------
ENHANCE_OPTIONS = (
    MethodOption("stride_inplane", int, 1,
                 "in-plane step between patches in LQ voxels (1: every position; larger is faster)"),
    MethodOption("stride_thick", int, 1, "step between patches along the thick axis in LQ voxels"),
    MethodOption("batch_size", int, 8192, "patches predicted at a time (memory)"),
)

COMMON_TRAIN_OPTIONS = (
    MethodOption("patch_thick", int, 2, "LQ patch size along the thick axis (LQ voxels)"),
    MethodOption("patch_inplane", int, 5, "LQ patch size in-plane (voxels)"),
    MethodOption("samples", int, 150_000, "patch pairs sampled in the brain masks"),
    MethodOption("realizations", int, 4,
                 "simulated LQ versions per training volume and axis (each with its own SNR, slice "
                 "profile and contrast drawn from the training ranges)"),
    MethodOption("validation", float, 0.2, "fraction of the patch pairs held out to choose hyper-parameters"),
)

LINEAR_TRAIN_OPTIONS = COMMON_TRAIN_OPTIONS + (
    MethodOption("lambdas", str, "1e-7,1e-6,1e-5,1e-4,1e-3,1e-2",
                 "ridge penalties to try, relative to the number of training pairs (comma-separated)"),
)


# -- shared helpers --------------------------------------------------------------------------------------
def _positive_int(options: dict, name: str, method: str, minimum: int = 1) -> int:
    value = options[name]
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise InputError(f"option {name} of {method} must be an integer >= {minimum} (got {value!r})")
    return int(value)


def lq_patch_of(options: dict, method: str) -> tuple:
    thick = _positive_int(options, "patch_thick", method)
    inplane = _positive_int(options, "patch_inplane", method)
    return (thick, inplane, inplane)


def sample_training_pairs(pairs, factor: int, lq_patch, n_samples: int, per: int, reporter) -> tuple:
    """Feature/target matrices from ``per`` realizations of every volume and axis of ``pairs``.

    Realizations are made one at a time (same order and seeds as ``TrainingPairs.fixed(per)``) and
    dropped once sampled, so memory holds one volume pair at a time plus the samples.
    """
    n_volumes, axes = len(pairs.hq), tuple(pairs.axes)
    jobs = [(v, axis) for v in range(n_volumes) for axis in axes for _ in range(per)]
    share = np.full(len(jobs), n_samples // len(jobs))
    share[: n_samples - share.sum()] += 1
    rng = np.random.default_rng(pairs.seed)            # the simulation parameters, as in fixed()
    sample_rng = np.random.default_rng([pairs.seed, 1])  # the patch positions
    xs, ys, params = [], [], []
    for done, ((v, axis), n) in enumerate(zip(jobs, share)):
        reporter(done / len(jobs), f"simulating and sampling realization {done + 1}/{len(jobs)}")
        real = pairs.realize(v, axis, rng)
        params.append(real.params)
        if n > 0:
            x, y = features.sample_pairs([real], lq_patch, int(n), factor, sample_rng)
            xs.append(x)
            ys.append(y)
    reporter(1.0, "training pairs sampled", force=True)
    return np.concatenate(xs), np.concatenate(ys), params


def split_validation(n: int, fraction: float, rng: np.random.Generator) -> tuple:
    if not 0.0 < fraction < 0.9:
        raise InputError(f"the validation fraction must be in (0, 0.9) (got {fraction})")
    order = rng.permutation(n)
    n_val = max(1, int(round(n * fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def check_model(model: ModelFile, method: str, factor: int) -> tuple:
    """(lq_patch, hq_patch) of a classic model after checking it fits ``method`` and ``factor``."""
    if model is None:
        raise ModelError(f"the {method} method needs a model file")
    model.check_fits(method=method, factor=factor)
    where = f"{model.path.name}: " if model.path else ""
    try:
        lq_patch = tuple(int(p) for p in model.params["lq_patch"])
        hq_patch = tuple(int(p) for p in model.params["hq_patch"])
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{where}the model lacks a valid lq_patch/hq_patch parameter") from None
    if len(lq_patch) != 3 or min(lq_patch) < 1 or hq_patch != (lq_patch[0] * int(factor),) + lq_patch[1:]:
        raise ModelError(f"{where}the model's patch sizes (LQ {lq_patch}, HQ {hq_patch}) do not fit ×{factor}")
    return lq_patch, hq_patch


def _check_fits_volume(lq_c: np.ndarray, lq_patch) -> None:
    small = [(s, p) for s, p in zip(lq_c.shape, lq_patch) if s < p]
    if small:
        raise InputError(f"the input ({'×'.join(map(str, lq_c.shape))} voxels, thick axis first) is smaller "
                         f"than the model's {'×'.join(map(str, lq_patch))} patch")


def _strides(options: dict, method: str) -> tuple:
    inplane = _positive_int(options, "stride_inplane", method)
    thick = _positive_int(options, "stride_thick", method)
    return (thick, inplane, inplane)


def _model_name(method: str, factor: int) -> str:
    return f"{method}-x{factor}"


# -- linear (ridge) regression ---------------------------------------------------------------------------
def parse_lambdas(text) -> list:
    try:
        values = [float(v) for v in str(text).replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise InputError(f"lambdas must be comma-separated numbers (got {text!r})") from None
    if not values or any(not (v > 0) or not np.isfinite(v) for v in values):
        raise InputError(f"lambdas must be positive numbers (got {text!r})")
    return sorted(set(values))


def fit_ridge(X: np.ndarray, Y: np.ndarray, lambdas, X_val=None, Y_val=None) -> dict:
    """Ridge regression ``Y ≈ X W + b`` in closed form for every relative penalty in ``lambdas``.

    The penalty on ``W`` is ``lambda × n`` (n = rows of ``X``) so that a relative lambda means the
    same at any sample count.  With a validation set, the lambda with the lowest validation RMSE is
    chosen (else the first).  One eigen-decomposition of the centred Gram matrix serves every lambda.
    Returns ``{"W", "b", "lambda", "val_rmse" (per lambda), "val_rmse_zero"}`` (float64).
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    n = len(X)
    if n < 2 or X.ndim != 2 or Y.ndim != 2 or len(Y) != n:
        raise InputError(f"ridge regression needs matching 2-D X, Y with >= 2 rows (got {X.shape}, {Y.shape})")
    mx, my = X.mean(axis=0), Y.mean(axis=0)
    Xc = X - mx
    s, Q = np.linalg.eigh(Xc.T @ Xc)
    s = np.maximum(s, 0.0)
    QtB = Q.T @ (Xc.T @ (Y - my))
    lambdas = [float(v) for v in lambdas]
    val_rmse, val_zero = [], None
    if X_val is not None and len(X_val):
        Xv = np.asarray(X_val, dtype=np.float64) - mx
        Yv = np.asarray(Y_val, dtype=np.float64) - my
        XvQ = Xv @ Q
        val_zero = float(np.sqrt(np.mean((Yv + my) ** 2)))
        for lam in lambdas:
            pred = (XvQ / (s + lam * n)) @ QtB
            val_rmse.append(float(np.sqrt(np.mean((Yv - pred) ** 2))))
        best = lambdas[int(np.argmin(val_rmse))]
    else:
        best = lambdas[0]
    W = Q @ (QtB / (s + best * n)[:, None])
    return {"W": W, "b": my - mx @ W, "lambda": best, "val_rmse": val_rmse, "val_rmse_zero": val_zero}


def train_linear(pairs, factor: int, options: dict, reporter, provenance: dict) -> ModelFile:
    started = time.perf_counter()
    lq_patch = lq_patch_of(options, "linear")
    n_samples = _positive_int(options, "samples", "linear", 10)
    per = _positive_int(options, "realizations", "linear")
    lambdas = parse_lambdas(options["lambdas"])
    X, Y, sim_params = sample_training_pairs(pairs, factor, lq_patch, n_samples, per,
                                             reporter.sub(0.0, 0.8, "sampling training pairs"))
    reporter(0.8, "choosing the ridge penalty on the validation split", force=True)
    train_idx, val_idx = split_validation(len(X), float(options["validation"]),
                                          np.random.default_rng([pairs.seed, 2]))
    chosen = fit_ridge(X[train_idx], Y[train_idx], lambdas, X[val_idx], Y[val_idx])
    reporter(0.9, f"refitting on all pairs with lambda {chosen['lambda']:g}", force=True)
    final = fit_ridge(X, Y, [chosen["lambda"]])  # the chosen penalty, on every pair
    reporter(1.0, "done", force=True)
    hq_patch = (lq_patch[0] * factor,) + lq_patch[1:]
    params = {
        "lq_patch": list(lq_patch), "hq_patch": list(hq_patch), "lq_aspect": float(factor),
        "feature": FEATURE, "target": TARGET, "features": int(X.shape[1]), "outputs": int(Y.shape[1]),
        "lambda": chosen["lambda"], "lambda_is_relative_to_pairs": True,
        "lambdas_tried": lambdas, "validation_rmse": chosen["val_rmse"],
        "validation_rmse_trilinear": chosen["val_rmse_zero"],
        "validation_fraction": float(options["validation"]),
    }
    training = dict(provenance)
    training.update({
        "pairs": int(len(X)), "realizations_per_volume_axis": per,
        "realization_parameters": sim_params, "train_seconds": round(time.perf_counter() - started, 2),
    })
    return ModelFile(method="linear", name=_model_name("linear", factor), factor=int(factor), params=params,
                     arrays={"W": final["W"].astype(np.float32), "b": final["b"].astype(np.float32)},
                     training=training)


def enhance_linear(lq, factor, model, device, reporter, **options):
    lq_patch, hq_patch = check_model(model, "linear", factor)
    W, b = model.arrays.get("W"), model.arrays.get("b")
    d_in = d_out = int(np.prod(hq_patch))
    if W is None or b is None or W.shape != (d_in, d_out) or b.shape != (d_out,):
        where = f"{model.path.name}: " if model.path else ""
        raise ModelError(f"{where}the regression matrix does not match the model's {hq_patch} patch; "
                         "the file is not a valid linear model")
    _check_fits_volume(lq, lq_patch)
    W = np.asarray(W, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    hq, _ = features.enhance_residual(lq, factor, lq_patch, _strides(options, "linear"),
                                      lambda x: x @ W + b, reporter=reporter,
                                      batch_size=_positive_int(options, "batch_size", "linear"))
    return hq, {}


SPECS = {
    "linear": MethodSpec(
        name="linear", label="Linear regression (IQT)",
        description="classic IQT: ridge regression from the interpolated LQ patch to the HQ residual patch",
        enhance=enhance_linear, needs_model=True, options=ENHANCE_OPTIONS,
        train=train_linear, train_options=LINEAR_TRAIN_OPTIONS),
}
