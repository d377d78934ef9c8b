"""The exact batched lasso (IQTEnhanceLib.homotopy, solver "homotopy", the default): agreement with
SPAMS and with brute force, the KKT conditions on random and real problems, and the edge cases."""
import itertools

import numpy as np
import pytest

from conftest import requires_cuda
from IQTEnhanceLib import features, sparse
from IQTEnhanceLib.errors import InputError
from IQTEnhanceLib.methods.srep import SRepModel
from IQTEnhanceLib.models import default_model_path, load_model
from IQTEnhanceLib.normalize import intensity_scale, to_canonical
from IQTEnhanceLib.patches import sample_positions
from IQTEnhanceLib.simulate import SimulationParameters, foreground_mask, simulate


def kkt_violation(Y, D, A, lam):
    """Largest violation of the lasso's optimality conditions, relative to λ: |D_jᵀr| ≤ λ off the
    support and D_jᵀr = λ sign(a_j) on it (r = y − Da), computed in float64."""
    Y, D, A = (np.asarray(x, dtype=np.float64) for x in (Y, D, A))
    corr = (Y - A @ D.T) @ D
    off = np.maximum(np.abs(corr) - lam, 0.0) * (A == 0)
    on = np.abs(corr - lam * np.sign(A)) * (A != 0)
    return float(max(off.max(initial=0.0), on.max(initial=0.0)) / lam)


def brute_force(y, D, lam):
    """The lasso optimum by enumerating every sign pattern (small K only)."""
    G = D.T @ D
    q = D.T @ y
    best, best_a = 0.5 * y @ y, np.zeros(D.shape[1])
    for signs in itertools.product((-1, 0, 1), repeat=D.shape[1]):
        s = np.array(signs, dtype=float)
        support = s != 0
        if not support.any():
            continue
        Gs = G[np.ix_(support, support)]
        if np.linalg.matrix_rank(Gs) < support.sum():
            continue
        a_s = np.linalg.solve(Gs, q[support] - lam * s[support])
        if np.any(a_s * s[support] <= 0):
            continue
        a = np.zeros(D.shape[1])
        a[support] = a_s
        value = 0.5 * np.sum((D @ a - y) ** 2) + lam * np.abs(a).sum()
        if value < best:
            best, best_a = value, a
    return best, best_a


def random_problem(seed, d=30, K=80, n=400, k=4, noise=0.05):
    rng = np.random.default_rng(seed)
    D = rng.normal(size=(d, K))
    D /= np.linalg.norm(D, axis=0)
    A0 = np.zeros((n, K))
    for i in range(n):
        A0[i, rng.choice(K, k, replace=False)] = rng.normal(size=k)
    Y = A0 @ D.T + noise * rng.normal(size=(n, d))
    return D.astype(np.float32), Y.astype(np.float32)


@pytest.fixture(scope="module")
def real_patches(colin):
    """Features of real LQ patches (Colin27 crop, ×4 along k, SNR 20) in the shipped SRep model's
    basis, with its LQ dictionary and inference λ: exactly what the method codes."""
    hq, mask = colin
    lq, _ = simulate(hq, SimulationParameters(factor=4, axis="k", snr=20.0, seed=1), mask=mask)
    model = load_model(default_model_path("srep"))
    m = SRepModel(model, model.factor)
    lq_c = np.ascontiguousarray(to_canonical(lq.array.astype(np.float32), 0))
    lq_c = lq_c / np.float32(intensity_scale(lq_c))
    pos = sample_positions(lq_c.shape, m.lq_patch, 3000, np.random.default_rng(0), foreground_mask(lq_c), 0.5)
    x = features.features_at(features.upsampled(lq_c, 4), pos, m.lq_patch, 4)
    return (x @ m.P).astype(np.float32), m.D_l, m.lam


def test_auto_picks_the_homotopy_on_every_device():
    assert sparse.pick_solver("auto", "cpu") == "homotopy"
    assert sparse.pick_solver("auto", "cuda") == "homotopy"


def test_matches_brute_force_exactly_on_small_problems():
    D, Y = random_problem(1, d=6, K=7, n=12, k=2, noise=0.1)
    for lam in (0.02, 0.1, 0.4):
        A = sparse.lasso(Y, sparse.Dictionary(D), lam, solver="homotopy")
        for y, a in zip(Y.astype(np.float64), A):
            best, best_a = brute_force(y, D.astype(np.float64), lam)
            assert sparse.objective(y[None], D, a[None], lam)[0] <= best * (1 + 1e-6) + 1e-9
            assert np.array_equal(a != 0, best_a != 0)


@pytest.mark.parametrize("lam", [0.01, 0.05, 0.2])
def test_kkt_conditions_hold_on_random_problems(lam):
    D, Y = random_problem(2)
    A = sparse.lasso(Y, sparse.Dictionary(D), lam, solver="homotopy")
    assert A.dtype == np.float32 and A.shape == (len(Y), D.shape[1])
    assert kkt_violation(Y, D, A, lam) < 1e-3
    assert (A == 0).mean() > 0.5        # sparse: exact zeros, not small values


def test_real_patches_kkt_and_agreement_with_spams(real_patches):
    Z, D, lam = real_patches
    A = sparse.lasso(Z, sparse.Dictionary(D), lam, solver="homotopy")
    assert kkt_violation(Z, D, A, lam) < 1e-3
    nnz = (A != 0).sum(1)
    assert 5 < nnz.mean() < 60 and (A == 0).mean() > 0.9
    if not sparse.spams_available():
        pytest.skip("SPAMS not installed: the KKT conditions above certify the codes")
    S = sparse.lasso(Z, sparse.Dictionary(D), lam, solver="spams")
    same_support = ((A != 0) == (S != 0)).all(axis=1).mean()
    assert same_support >= 0.99
    f_h = sparse.objective(Z, D, A, lam).sum()
    f_s = sparse.objective(Z, D, S, lam).sum()
    assert abs(f_h / f_s - 1) < 5e-3
    assert abs(f_h / f_s - 1) < 1e-6      # in fact the same optimum to float precision


def test_edge_cases():
    D, Y = random_problem(3, d=20, K=40, n=50)
    dic = sparse.Dictionary(D)
    # an all-zero patch and λ ≥ max|Dᵀy| give the zero code
    Y[:5] = 0.0
    lam_max = np.abs(Y[5:10] @ D).max(axis=1)
    Y[5:10] *= 0.5 / lam_max[:, None]          # now max|Dᵀy| = 0.5
    A = sparse.lasso(Y, dic, 0.5, solver="homotopy")
    assert np.all(A[:10] == 0)
    # λ = 0 (least squares, no sparse solution) and negative λ are refused with a clear error
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(InputError, match="λ > 0"):
            sparse.lasso(Y, dic, bad, solver="homotopy")
    # one atom: the code is the soft-thresholded correlation
    one = D[:, :1]
    a = sparse.lasso(Y[10:], sparse.Dictionary(one), 0.05, solver="homotopy")[:, 0]
    q = (Y[10:] @ one)[:, 0]
    assert np.allclose(a, np.sign(q) * np.maximum(np.abs(q) - 0.05, 0) / float(one[:, 0] @ one[:, 0]), atol=1e-5)


def test_duplicate_and_near_parallel_atoms():
    D, Y = random_problem(4, d=20, K=30, n=200)
    rng = np.random.default_rng(5)
    near = D[:, :5] + 1e-4 * rng.normal(size=(20, 5)).astype(np.float32)
    near /= np.linalg.norm(near, axis=0)
    D2 = np.concatenate([D, D[:, :5], near, -D[:, 5:8]], axis=1)   # exact copies, near copies, negatives
    lam = 0.05
    A = sparse.lasso(Y, sparse.Dictionary(D), lam, solver="homotopy")
    f = sparse.objective(Y, D, A, lam)
    A2 = sparse.lasso(Y, sparse.Dictionary(D2), lam, solver="homotopy")
    assert kkt_violation(Y, D2, A2, lam) < 1e-3
    # more atoms can only help (the near copies are slightly different atoms); near-ties between
    # near copies are resolved to within the certificate's tolerance (measured: 2e-5 of the objective)
    assert np.all(sparse.objective(Y, D2, A2, lam) <= f * (1 + 1e-4) + 1e-9)
    # exact copies and negatives add nothing: the same optimal objective
    D3 = np.concatenate([D, D[:, :5], -D[:, 5:8]], axis=1)
    A3 = sparse.lasso(Y, sparse.Dictionary(D3), lam, solver="homotopy")
    assert kkt_violation(Y, D3, A3, lam) < 1e-3
    assert np.allclose(sparse.objective(Y, D3, A3, lam), f, rtol=1e-5, atol=1e-8)


def test_dictionary_learning_uses_the_exact_solver_by_default(monkeypatch):
    calls = []
    original = sparse.lasso_exact

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(sparse, "lasso_exact", spy)
    _, X = random_problem(6, d=12, K=20, n=600, k=2)
    sparse.learn_dictionary(X, 20, 0.1, iterations=5, batch=64, seed=0)
    assert len(calls) == 5


@requires_cuda
def test_cuda_agrees_with_cpu(real_patches):
    Z, D, lam = real_patches
    cpu = sparse.lasso(Z, sparse.Dictionary(D, "cpu"), lam, solver="homotopy")
    gpu = sparse.lasso(Z, sparse.Dictionary(D, "cuda"), lam, solver="homotopy")
    assert ((cpu != 0) == (gpu != 0)).all(axis=1).mean() >= 0.99
    assert kkt_violation(Z, D, gpu, lam) < 1e-3
    f_c = sparse.objective(Z, D, cpu, lam).sum()
    f_g = sparse.objective(Z, D, gpu, lam).sum()
    assert abs(f_g / f_c - 1) < 1e-5


def test_threads_each_code_their_rows_with_the_same_result(real_patches, monkeypatch):
    """On a CPU with 2 torch threads the rows are split over 2 Python threads with one torch thread
    each: the same codes as one thread coding them all, and the thread count is restored."""
    import torch

    Z, D, lam = real_patches
    dictionary = sparse.Dictionary(D, "cpu")
    before = torch.get_num_threads()
    try:
        # chunks of 256 rows either way (a row's float32 path depends a little on its chunk's steps)
        torch.set_num_threads(1)
        monkeypatch.setattr(sparse, "HOMOTOPY_BATCH", 256)
        alone = sparse.lasso_exact(Z, dictionary, lam).numpy()
        torch.set_num_threads(2)
        monkeypatch.setattr(sparse, "HOMOTOPY_BATCH", 512)
        split = sparse.lasso_exact(Z, dictionary, lam).numpy()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len(Z) > 512 and np.array_equal(alone, split)
    assert kkt_violation(Z, D, split, lam) < 1e-3
