"""Sparse coding solvers of IQT-SRep (IQTEnhanceLib.sparse) on synthetic dictionaries."""
import numpy as np
import pytest

from conftest import requires_cuda
from IQTEnhanceLib import sparse


def _problem(seed=0, d=40, K=96, n=200, k=3, noise=0.0):
    rng = np.random.default_rng(seed)
    D = rng.normal(size=(d, K))
    D /= np.linalg.norm(D, axis=0)
    A0 = np.zeros((n, K))
    for i in range(n):
        idx = rng.choice(K, k, replace=False)
        A0[i, idx] = rng.choice([-1.0, 1.0], k) * rng.uniform(1.0, 2.0, k)
    Y = A0 @ D.T + noise * rng.normal(size=(n, d))
    return D.astype(np.float32), A0, Y.astype(np.float32)


SOLVERS = ["fista"] + (["spams"] if sparse.spams_available() else [])


@pytest.mark.parametrize("solver", SOLVERS)
def test_recovers_known_sparse_codes(solver):
    D, A0, Y = _problem()
    lam = 0.01
    A = sparse.lasso(Y, sparse.Dictionary(D), lam, solver=solver, tol=1e-5, max_iter=2000)
    support = np.abs(A) > 0.1
    assert (support == (A0 != 0)).all(axis=1).mean() > 0.99
    # with a small λ the codes equal the true ones up to a shrinkage of the order of λ
    assert np.abs(A - A0).max() < 0.1


def test_fista_objective_decreases():
    D, A0, Y = _problem(noise=0.05)
    dic = sparse.Dictionary(D)
    lam = 0.05
    values = []
    for iters in (1, 3, 10, 30, 100):
        A, _ = sparse.fista(Y, dic, lam, max_iter=iters, tol=0.0)
        values.append(sparse.objective(Y, D, A.numpy(), lam).sum())
    assert all(b <= a * (1 + 1e-6) for a, b in zip(values, values[1:])), values
    assert values[-1] < 0.5 * values[0]


@pytest.mark.parametrize("solver", [s for s in SOLVERS if s != "fista"])
def test_solvers_agree_on_the_objective(solver):
    D, _, Y = _problem(seed=1, noise=0.1)
    dic = sparse.Dictionary(D)
    lam = 0.05
    ref = sparse.objective(Y, D, sparse.lasso(Y, dic, lam, solver="fista", tol=1e-6, max_iter=3000), lam).sum()
    got = sparse.objective(Y, D, sparse.lasso(Y, dic, lam, solver=solver), lam).sum()
    assert abs(got - ref) <= 1e-3 * ref


def test_zero_and_screened_rows_give_zero_codes():
    D, _, Y = _problem()
    Y[:10] = 0.0
    A = sparse.lasso(Y, sparse.Dictionary(D), 0.05, solver="fista")
    assert np.all(A[:10] == 0)
    assert np.any(A[10:] != 0)


@requires_cuda
def test_cpu_and_cuda_agree():
    D, _, Y = _problem(seed=2, noise=0.05)
    lam = 0.05
    cpu = sparse.lasso(Y, sparse.Dictionary(D, "cpu"), lam, solver="fista", tol=1e-6, max_iter=3000)
    gpu = sparse.lasso(Y, sparse.Dictionary(D, "cuda"), lam, solver="fista", tol=1e-6, max_iter=3000)
    assert np.abs(cpu - gpu).max() < 1e-3
    f_cpu = sparse.objective(Y, D, cpu, lam).sum()
    f_gpu = sparse.objective(Y, D, gpu, lam).sum()
    assert abs(f_cpu - f_gpu) <= 1e-4 * f_cpu


def test_dictionary_learning_is_deterministic_and_fits_the_data():
    rng = np.random.default_rng(99)
    D0, _, X = _problem(seed=3, d=20, K=30, n=2000, k=2, noise=0.01)
    a = sparse.learn_dictionary(X, 30, 0.2, iterations=100, batch=64, seed=7)
    b = sparse.learn_dictionary(X, 30, 0.2, iterations=100, batch=64, seed=7)
    assert np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=0), 1.0, atol=1e-5)
    # learned atoms align with the generating ones far better than random unit vectors do
    best = np.abs(D0.T @ a).max(axis=1)
    rand = rng.normal(size=a.shape)
    rand /= np.linalg.norm(rand, axis=0)
    assert np.median(best) > 0.9 > np.median(np.abs(D0.T @ rand).max(axis=1))
