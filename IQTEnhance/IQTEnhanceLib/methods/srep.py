"""IQT-SRep: coupled sparse representations of LQ and HQ patches (Eldaly et al. 2024, after Yang et
al., IEEE TIP 2010, and Zeyde et al. 2010).

An LQ patch feature ``y`` is coded on an LQ dictionary, ``min ½‖D_l a − y‖² + λ‖a‖₁`` (one lasso
per patch, :mod:`..sparse`), and the HQ patch is rebuilt from the same code with an HQ dictionary
``D_h a``; overlapping patches are averaged by the patch engine.  Three formulations:

* ``joint`` (the paper's): features are mean-removed LQ patches, targets the HQ patch minus the LQ
  patch mean; one dictionary is learned over the concatenated, separately normalised [LQ; HQ]
  vectors (online dictionary learning, Mairal et al. 2009) and split into D_l and D_h.
* ``residual`` (Zeyde et al.): features are the mean-removed trilinear patches of
  :mod:`..features`, targets HQ − trilinear; D_l is learned on the features alone and D_h fitted by
  least squares to the training codes.
* ``ridge-residual`` (the default): as ``residual``, plus a ridge regression from the feature to the
  target; D_h is fitted to what the ridge misses.  The sparse code adds the non-linear part.

Measured on the whole Colin27 brain (held out; ×4 thick slices along k, Gaussian profile, SNR 20,
seed 1; NRMSE / SSIM in the brain mask; trained on the ICBM 2009c T1 template, 100k patch pairs,
512 atoms, λ 0.05): trilinear 0.0777 / 0.781, ridge alone 0.0583 / 0.872, ``joint`` 0.0636 / 0.857,
``residual`` 0.0592 / 0.860, ``ridge-residual`` 0.0567 / 0.878 (hence the default; the model card
``Resources/Models/srep_t1_x4.md`` has the table, ``Testing/benchmarks/bench_srep.py`` the speeds).

Features are coded in a PCA basis of the training features (the trilinear patch of a 2×5×5 LQ patch
spans only ~100 of its 200 dimensions: the basis loses nothing and halves the solver's work).

Trust map (option ``trust_map``): per patch the RMS LQ coding residual ``‖D_l a − y‖ / √d`` in units of
the input's bright-tissue intensity (the canonical frame divides by the foreground's 99th
percentile), spread to the voxels the patch covers and averaged.  High values mark input the
dictionary cannot explain (foreign structures, artefacts, another contrast): there the output is
least trustworthy.  Relative to ‖y‖ it would not work: λ is absolute, so a strong foreign pattern
is coded nearly as well, relatively, as brain tissue (measured on a bright checkerboard inserted
into Colin27: relative residual 0.21 inside vs 0.23 in the brain; the RMS residual separates them).
"""
from __future__ import annotations

import time

import numpy as np

from .. import features, sparse
from ..errors import InputError, ModelError
from ..models import ModelFile
from ..patches import extract_patches, hq_patch_shape, hq_positions, reconstruct_patchwise, sample_positions
from . import MethodOption, MethodSpec, validate_option_values

FORMULATIONS = ("ridge-residual", "residual", "joint")
# The ridge-residual recipe codes at λ 0.1 at inference (model parameter ``inference_lam``), trained at
# 0.05: on Colin27 λ 0.02-0.1 changes NRMSE by < 0.0002 while the support grows from 21 atoms per
# patch at 0.1 to 32 at 0.05, and the coding time with it.
HYBRID_INFERENCE_LAM = 0.1


def inference_lambda(params: dict) -> float:
    """The λ a model codes at unless the caller sets one: its ``inference_lam``, else its training λ."""
    return float(params.get("inference_lam", params["lam"]))

ENHANCE_OPTIONS = (
    MethodOption("lam", float, 0.0, "sparsity weight λ of the lasso (0: the model's inference λ)", minimum=0.0),
    MethodOption("stride_inplane", int, 2,
                 "in-plane step between patches in LQ voxels (1: every position, slower, slightly better; "
                 "a model learned from the scan codes every row of its line patches, stepping along them)", minimum=1),
    MethodOption("stride_thick", int, 1, "step between patches along the thick axis in LQ voxels", minimum=1),
    MethodOption("solver", str, "auto",
                 "lasso solver: auto = homotopy (exact, torch, CPU and GPU); fista (approximate); spams "
                 "(needs the spams-bin package)", sparse.SOLVERS),
    MethodOption("batch_size", int, 8192, "patches coded at a time (memory; progress and cancel between batches)", minimum=1),
    MethodOption("max_iter", int, 500, "iteration cap of the FISTA solver", minimum=1),
    MethodOption("tol", float, 1e-4, "FISTA stops when a code's largest change is below tol × its largest value", minimum=0.0, min_exclusive=True),
    MethodOption("trust_map", bool, False,
                 "also return a per-voxel map of the LQ coding residual (high = the dictionary cannot "
                 "explain the input there)", extra="trust"),
    MethodOption("skip_background", bool, True,
                 "leave air (below 10% of the bright tissue, outside the head) at the trilinear "
                 "up-sampling instead of coding it"),
)

TRAIN_OPTIONS = (
    MethodOption("formulation", str, "ridge-residual",
                 "ridge-residual (best measured), residual (Zeyde) or joint (the paper's joint dictionary "
                 "over concatenated [LQ; HQ] patches)", FORMULATIONS),
    MethodOption("patch_thick", int, 2, "LQ patch size along the thick axis (LQ voxels)", minimum=1),
    MethodOption("patch_inplane", int, 5, "LQ patch size in-plane (voxels)", minimum=1),
    MethodOption("patch_shape", str, "square", "in-plane patch shape: square, or line (one voxel across the "
                 "second in-plane axis: learning from the scan itself, whose planes hold one fine in-plane axis)",
                 ("square", "line")),
    MethodOption("atoms", int, 512, "dictionary atoms", minimum=2),
    MethodOption("lam", float, 0.05, "sparsity weight λ (training and default inference)", minimum=0.0, min_exclusive=True),
    MethodOption("iterations", int, 200, "online dictionary learning iterations (mini-batches)", minimum=1),
    MethodOption("dl_batch", int, 256, "patches per dictionary-learning mini-batch", minimum=1),
    MethodOption("samples", int, 100_000, "patch pairs sampled in the brain masks", minimum=10),
    MethodOption("realizations", int, 1, "simulated LQ versions per training volume and axis", minimum=1),
    MethodOption("solver", str, "auto", "lasso solver used in training", sparse.SOLVERS),
)


# -- helpers -----------------------------------------------------------------------------------------
class SRepModel:
    """The arrays and parameters of an SRep model file, checked once."""

    def __init__(self, model: ModelFile, factor: int):
        if model is None:
            raise ModelError("the srep method needs a model file")
        model.check_fits(method="srep", factor=factor)
        where = f"{model.path.name}: " if model.path else ""
        p = model.params
        try:
            self.formulation = str(p["formulation"])
            self.lq_patch = tuple(int(v) for v in p["lq_patch"])
            self.hq_patch = tuple(int(v) for v in p["hq_patch"])
            self.train_lam = float(p["lam"])
            self.lam = inference_lambda(p)
            self.normalize = bool(p.get("normalize", False))
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{where}the model lacks valid srep parameters (formulation, lq_patch, hq_patch, "
                             "lam)") from None
        if self.formulation not in FORMULATIONS:
            raise ModelError(f"{where}unknown srep formulation {self.formulation!r}")
        if len(self.lq_patch) != 3 or min(self.lq_patch) < 1 or \
                self.hq_patch != (self.lq_patch[0] * int(factor),) + self.lq_patch[1:]:
            raise ModelError(f"{where}the model's patch sizes (LQ {self.lq_patch}, HQ {self.hq_patch}) do not "
                             f"fit ×{factor}")
        a = model.arrays
        try:
            self.P = np.asarray(a["P"], dtype=np.float32)
            self.D_l = np.asarray(a["D_l"], dtype=np.float32)
            self.D_h = np.asarray(a["D_h"], dtype=np.float32)
            self.W = np.asarray(a["W"], dtype=np.float32) if "W" in a else None
        except KeyError as exc:
            raise ModelError(f"{where}the model lacks the array {exc}; not a valid srep model") from None
        d_in = int(np.prod(self.lq_patch)) if self.formulation == "joint" else int(np.prod(self.hq_patch))
        d_out = int(np.prod(self.hq_patch))
        r, K = self.D_l.shape if self.D_l.ndim == 2 else (-1, -1)
        ok = (self.P.ndim == 2 and self.P.shape == (d_in, r) and self.D_h.shape == (K, d_out)
              and (self.W is None or self.W.shape == (d_in, d_out)))
        if not ok or not all(np.isfinite(x).all() for x in (self.P, self.D_l, self.D_h)):
            raise ModelError(f"{where}the dictionaries do not match the model's {self.lq_patch} patch "
                             "(or hold non-finite values); the file is not a valid srep model")
        if self.formulation == "ridge-residual" and self.W is None:
            raise ModelError(f"{where}a ridge-residual srep model needs its ridge matrix W")
        self.K = K


class Coder:
    """Sparse codes of feature rows in the model's PCA basis, plus the relative coding residual."""

    def __init__(self, m: SRepModel, lam: float, solver: str, device: str, max_iter: int, tol: float):
        self.m = m
        self.lam = lam
        self.solver = sparse.pick_solver(solver, device)
        self.dictionary = sparse.Dictionary(m.D_l, device)
        self.max_iter = max_iter
        self.tol = tol

    def __call__(self, x: np.ndarray) -> tuple:
        """codes (n, K) and RMS coding residuals (n,) for features ``x`` (n, d_in)."""
        m = self.m
        z = x @ m.P
        out_of_span = np.maximum(np.einsum("ij,ij->i", x, x) - np.einsum("ij,ij->i", z, z), 0.0)
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
        if m.normalize:
            scale = np.where(norms > 1e-8, norms, 1.0).astype(np.float32)
            z = z / scale[:, None]
        a = sparse.lasso(z, self.dictionary, self.lam, solver=self.solver, max_iter=self.max_iter, tol=self.tol)
        r = a @ m.D_l.T - z
        res = np.einsum("ij,ij->i", r, r)
        if m.normalize:
            a *= scale[:, None]
            res = res * scale ** 2
        residual = np.sqrt((res + out_of_span) / x.shape[1])
        return a, residual.astype(np.float32)


# -- inference ---------------------------------------------------------------------------------------
def _foreground(lq_c: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    from ..simulate import foreground_mask

    return ndimage.binary_dilation(foreground_mask(lq_c), iterations=1)


def enhance(lq, factor, model, device, reporter, **options):
    options = validate_option_values(ENHANCE_OPTIONS, options, "srep")
    m = SRepModel(model, factor)
    small = [(s, p) for s, p in zip(lq.shape, m.lq_patch) if s < p]
    if small:
        raise InputError(f"the input ({'×'.join(map(str, lq.shape))} voxels, thick axis first) is smaller than "
                         f"the model's {'×'.join(map(str, m.lq_patch))} patch")
    lam = options["lam"] or m.lam
    stride = (options["stride_thick"], options["stride_inplane"], options["stride_inplane"])
    if m.lq_patch[1] == 1 < m.lq_patch[2]:
        # a line patch (learned from the scan) covers one row: stepping over rows leaves half of them
        # to the other plane alone.  Colin27 ×4, srep learned from the scan, whole brain: NRMSE 0.0700
        # with every other row skipped, 0.0614 with every row (stride 3 along the rows: 0.0616)
        stride = (stride[0], 1, stride[2])
    batch_size = options["batch_size"]
    coder = Coder(m, lam, options["solver"], device, options["max_iter"], options["tol"])
    want_trust = bool(options["trust_map"])
    mask = _foreground(lq) if options["skip_background"] else None
    if mask is not None and not mask.any():
        mask = None
    reporter(0.0, f"IQT-SRep: coding patches ({coder.solver} solver, λ={lam:g})", force=True)
    last = {}

    if m.formulation == "joint":
        return _enhance_joint(lq, factor, m, coder, stride, batch_size, mask, reporter, want_trust)

    def predict(x):
        a, res = coder(x)
        last["res"] = res
        y = a @ m.D_h
        if m.W is not None:
            y += x @ m.W
        return y

    extra = (lambda x, y: last["res"]) if want_trust else None
    hq, trust = features.enhance_residual(lq, factor, m.lq_patch, stride, predict, reporter=reporter,
                                          batch_size=batch_size, mask=mask, extra=extra)
    return hq, ({"trust": trust} if want_trust else {})


def _enhance_joint(lq, factor, m, coder, stride, batch_size, mask, reporter, want_trust):
    from ..patches import PatchAccumulator

    up = features.upsampled(lq, factor)
    per_patch = []

    def predict(positions):
        p = extract_patches(lq, positions, m.lq_patch).reshape(len(positions), -1)
        mean = p.mean(axis=1, keepdims=True)
        a, res = coder(p - mean)
        if want_trust:
            per_patch.append((positions, res))
        return (a @ m.D_h + mean).reshape((len(positions),) + m.hq_patch)

    hq = reconstruct_patchwise(lq.shape, factor, 0, m.lq_patch, stride, predict, batch_size=batch_size,
                               mask=mask, fill=up, progress=reporter)
    extras = {}
    if want_trust:
        acc = PatchAccumulator(up.shape)
        for positions, values in per_patch:
            acc.add(hq_positions(positions, factor, 0),
                    np.broadcast_to(values.reshape(-1, 1, 1, 1), (len(values),) + m.hq_patch))
        extras["trust"] = acc.result(fill=0.0)
    return hq, extras


# -- training ----------------------------------------------------------------------------------------
def _sample(pairs, factor, lq_patch, n_samples, per, formulation, reporter):
    """Training matrices (features X, targets Y) from ``per`` realizations per volume and axis,
    simulated one at a time in the same order and with the same seeds as ``TrainingPairs.fixed``."""
    jobs = [(v, axis) for v in range(len(pairs.hq)) for axis in pairs.axes for _ in range(per)]
    share = np.full(len(jobs), n_samples // len(jobs))
    share[: n_samples - share.sum()] += 1
    rng = np.random.default_rng(pairs.seed)
    sample_rng = np.random.default_rng([pairs.seed, 1])
    hq_patch = hq_patch_shape(lq_patch, factor, 0)
    xs, ys, params = [], [], []
    for done, ((v, axis), n) in enumerate(zip(jobs, share)):
        reporter(done / len(jobs), f"simulating and sampling realization {done + 1}/{len(jobs)}")
        real = pairs.realize(v, axis, rng)
        params.append(real.params)
        if n == 0:
            continue
        if formulation == "joint":
            pos = sample_positions(real.lq.shape, lq_patch, int(n), sample_rng, real.lq_mask, 0.5)
            lq_p = extract_patches(real.lq, pos, lq_patch).reshape(len(pos), -1)
            hq_p = extract_patches(real.hq, hq_positions(pos, factor, 0), hq_patch).reshape(len(pos), -1)
            mean = lq_p.mean(axis=1, keepdims=True)
            xs.append(lq_p - mean)
            ys.append(hq_p - mean)
        else:
            x, y = features.sample_pairs([real], lq_patch, int(n), factor, sample_rng)
            xs.append(x)
            ys.append(y)
    reporter(1.0, "training pairs sampled", force=True)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.float32), params


def _pca_basis(X: np.ndarray, energy_floor: float = 1e-7) -> np.ndarray:
    """Orthonormal basis (d, r) of the span of the features (directions carrying more than
    ``energy_floor`` of the energy); features are coded as X @ P."""
    S = np.asarray(X, dtype=np.float64)
    C = S.T @ S
    w, V = np.linalg.eigh(C)
    order = np.argsort(w)[::-1]
    w, V = w[order], V[:, order]
    keep = w > energy_floor * max(w[0], 1e-30)
    P = V[:, keep]
    # deterministic sign: the largest entry of each basis vector is positive
    signs = np.sign(P[np.argmax(np.abs(P), axis=0), np.arange(P.shape[1])])
    return (P * signs).astype(np.float32)


def _least_squares(A: np.ndarray, T: np.ndarray, rel_reg: float = 1e-6) -> np.ndarray:
    """argmin_M ‖A M − T‖² + ρ‖M‖² with ρ = rel_reg × mean diagonal of AᵀA (float64 normal equations)."""
    A64 = np.asarray(A, dtype=np.float64)
    G = A64.T @ A64
    rho = rel_reg * max(float(np.trace(G)) / len(G), 1e-12)
    return np.linalg.solve(G + rho * np.eye(len(G)), A64.T @ np.asarray(T, dtype=np.float64)).astype(np.float32)


def _code_all(Z, dictionary, lam, solver, reporter, batch=8192):
    out = np.zeros((len(Z), dictionary.K), dtype=np.float32)
    for s in range(0, len(Z), batch):
        reporter(s / len(Z), f"coding training patches {s}/{len(Z)}")
        out[s:s + batch] = sparse.lasso(Z[s:s + batch], dictionary, lam, solver=solver)
    reporter(1.0, "training patches coded", force=True)
    return out


def train(pairs, factor, options, reporter, provenance):
    options = validate_option_values(TRAIN_OPTIONS, options, "srep")
    started = time.perf_counter()
    formulation = str(options["formulation"])
    if formulation not in FORMULATIONS:
        raise InputError(f"formulation must be one of {', '.join(FORMULATIONS)} (got {formulation!r})")
    lq_patch = features.lq_patch_of(options)
    hq_patch = hq_patch_shape(lq_patch, factor, 0)
    K = options["atoms"]
    lam = options["lam"]
    iterations = options["iterations"]
    dl_batch = options["dl_batch"]
    n_samples = options["samples"]
    per = options["realizations"]
    solver = sparse.pick_solver(options["solver"], "cpu")
    seed = int(getattr(pairs, "seed", 0))

    X, Y, sim_params = _sample(pairs, factor, lq_patch, n_samples, per, formulation,
                               reporter.sub(0.0, 0.2, "sampling training pairs"))
    W = None
    if formulation == "ridge-residual":
        reporter(0.2, "fitting the ridge regression", force=True)
        # ridge penalty 1e-5 × n: the value that scored best on Colin27 for the linear method
        X64 = X.astype(np.float64)
        W = np.linalg.solve(X64.T @ X64 + 1e-5 * len(X) * np.eye(X.shape[1]), X64.T @ Y).astype(np.float32)
        T = Y - X @ W
    else:
        T = Y
    if formulation == "joint":
        # the paper's (Yang et al.) joint dictionary: [LQ/√M; HQ/√N], each column normalised
        dl, dh = X.shape[1], Y.shape[1]
        P = np.eye(dl, dtype=np.float32)
        J = np.concatenate([X / np.sqrt(dl), Y / np.sqrt(dh)], axis=1)
        norms = np.linalg.norm(J, axis=1)
        keep = norms > 1e-6 * max(float(norms.max()), 1e-30)
        J = J[keep] / norms[keep, None]
        D = sparse.learn_dictionary(J, K, lam, iterations=iterations, batch=dl_batch, seed=seed, solver=solver,
                                    reporter=reporter.sub(0.2, 0.95, "learning the joint dictionary"))
        D_l = D[:dl] * np.sqrt(dl)
        D_h = D[dl:] * np.sqrt(dh)
        scale = np.maximum(np.linalg.norm(D_l, axis=0), 1e-8)
        D_l, D_h = D_l / scale, (D_h / scale).T
        normalize = True
    else:
        reporter(0.2, "PCA basis of the features", force=True)
        P = _pca_basis(X)
        Z = X @ P
        normalize = False
        D_l = sparse.learn_dictionary(Z, K, lam, iterations=iterations, batch=dl_batch, seed=seed, solver=solver,
                                      reporter=reporter.sub(0.2, 0.7, "learning the LQ dictionary"))
        dictionary = sparse.Dictionary(D_l, "cpu")
        codes = _code_all(Z, dictionary, lam, solver, reporter.sub(0.7, 0.95, "coding the training patches"))
        reporter(0.95, "fitting the HQ dictionary by least squares", force=True)
        D_h = _least_squares(codes, T)
    Zt = (X @ P) / (np.linalg.norm(X, axis=1, keepdims=True) + 1e-8) if normalize else X @ P
    reporter(1.0, "done", force=True)
    params = {
        "formulation": formulation, "lq_patch": list(lq_patch), "hq_patch": list(hq_patch),
        "lq_aspect": float(factor), "atoms": K, "lam": lam, "normalize": normalize,
        "features": "mean-removed LQ patch" if formulation == "joint" else "mean-removed trilinear patch (features.py)",
        "target": "HQ patch minus the LQ patch mean" if formulation == "joint" else "HQ patch minus trilinear patch",
        "pca_dims": int(P.shape[1]), "ridge_lambda_relative": 1e-5 if W is not None else None,
        "iterations": iterations, "dl_batch": dl_batch, "training_solver": solver,
        "feature_norm_median": float(np.median(np.linalg.norm(Zt, axis=1))),
    }
    training = dict(provenance)
    training.update({"pairs": int(len(X)), "realizations_per_volume_axis": per,
                     "realization_parameters": sim_params,
                     "train_seconds": round(time.perf_counter() - started, 2)})
    arrays = {"P": P.astype(np.float32), "D_l": np.asarray(D_l, np.float32), "D_h": np.asarray(D_h, np.float32)}
    if W is not None:
        arrays["W"] = W
    return ModelFile(method="srep", name=f"srep-{formulation}-x{factor}", factor=int(factor), params=params,
                     arrays=arrays, training=training)


SPEC = MethodSpec(
    name="srep", label="IQT-SRep",
    description="coupled sparse representations: each LQ patch is coded on an LQ dictionary (lasso) and "
                "rebuilt with the coupled HQ dictionary; optional trust map of the coding residual",
    enhance=enhance, needs_model=True, needs_torch=True, options=ENHANCE_OPTIONS,
    train=train, train_options=TRAIN_OPTIONS, extras=("trust",), memory=(32, 256 << 20),
)
