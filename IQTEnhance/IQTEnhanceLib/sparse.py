"""Batched lasso solvers for sparse coding: for every row y of ``Y``

    minimise over a:   ½‖D a − y‖² + λ‖a‖₁          (D: d × K, atoms in columns)

Solvers (all return float32 codes of shape (n, K)):

* ``"homotopy"`` (what ``"auto"`` picks, CPU and GPU): the exact LARS-lasso homotopy of SPAMS, run
  for a whole batch of patches in lockstep in torch, its codes re-solved in float64 on the final
  support and certified by the KKT conditions (:mod:`.homotopy`).  No dependency beyond torch.
* ``"fista"``: batched FISTA in torch (CPU or CUDA, float32) with per-patch adaptive restart
  (O'Donoghue & Candès 2015), a relative-change tolerance, an iteration cap, optional warm start,
  and rows dropped from the batch once converged.  Approximate (to ``tol``).
* ``"spams"``: SPAMS's LARS-lasso (``spams.lasso`` with a Gram matrix), when ``spams`` (the
  ``spams-bin`` wheel) is installed; kept for comparison (Testing/benchmarks/bench_srep.py).

Measured on 2 CPU cores (bench_srep.py has the table): the homotopy and SPAMS give the same codes
(objective within 1e-9, the same support on >99.9% of patches); FISTA is 10-30× slower for the same
objective.
"""
from __future__ import annotations

import numpy as np

SOLVERS = ("auto", "homotopy", "fista", "spams")
HOMOTOPY_BATCH = 2048   # rows per homotopy call. Whole Colin27 brain, 2 cores: 8192 rows 29.6 s and 904 MB peak,
# 4096 34.7 s / 706 MB, 2048 33.2 s / 632 MB, 1024 42.2 s / 627 MB (the SPAMS path: 16.3 s / 605 MB)


def spams_available() -> bool:
    try:
        import spams  # noqa: F401
    except Exception:  # ImportError, or a broken binary wheel
        return False
    return True


def pick_solver(solver: str, device: str) -> str:
    """``auto`` → ``homotopy`` on every device (exact, torch only)."""
    solver = (solver or "auto").lower()
    if solver not in SOLVERS:
        from .errors import InputError

        raise InputError(f"sparse solver must be one of {', '.join(SOLVERS)} (got {solver!r})")
    if solver == "auto":
        return "homotopy"
    if solver == "spams" and not spams_available():
        from .errors import InputError

        raise InputError("the spams solver was asked for but SPAMS is not installed (pip install spams-bin)")
    return solver


def objective(Y: np.ndarray, D: np.ndarray, A: np.ndarray, lam: float) -> np.ndarray:
    """Per-row lasso objective ½‖D a − y‖² + λ‖a‖₁ (float64)."""
    Y = np.asarray(Y, dtype=np.float64)
    A = np.asarray(A, dtype=np.float64)
    R = A @ np.asarray(D, dtype=np.float64).T - Y
    return 0.5 * np.einsum("ij,ij->i", R, R) + lam * np.abs(A).sum(axis=1)


def lipschitz(D) -> float:
    """Largest eigenvalue of DᵀD (the gradient's Lipschitz constant)."""
    D = np.asarray(D, dtype=np.float64)
    small = D if D.shape[0] <= D.shape[1] else D.T
    return float(np.linalg.eigvalsh(small @ small.T)[-1])


# -- torch helpers -----------------------------------------------------------------------------
def _torch():
    import torch

    return torch


def _as_tensor(x, device, dtype=None):
    torch = _torch()
    dtype = dtype or torch.float32
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.as_tensor(np.ascontiguousarray(x), device=device, dtype=dtype)


class Dictionary:
    """A dictionary D (d × K) with what solver calls need, computed once on first use: torch copies
    on the device, the Gram matrix, the Lipschitz constant (the SPAMS path needs no torch)."""

    def __init__(self, D: np.ndarray, device: str = "cpu"):
        self.D_np = np.ascontiguousarray(D, dtype=np.float32)
        self.d, self.K = self.D_np.shape
        self.device_name = str(device)
        self._torch = None
        self._L = None
        self._G64 = None
        self._gram = None

    def _tensors(self):
        if self._torch is None:
            torch = _torch()
            device = torch.device(self.device_name)
            D = _as_tensor(self.D_np, device)
            Dt = D.t().contiguous()
            self._torch = (device, D, Dt, (Dt @ D).contiguous())
        return self._torch

    @property
    def device(self):
        return self._tensors()[0]

    @property
    def D(self):
        return self._tensors()[1]

    @property
    def Dt(self):
        return self._tensors()[2]

    @property
    def G(self):
        return self._tensors()[3]

    @property
    def L(self) -> float:
        if self._L is None:
            self._L = lipschitz(self.D_np) * 1.001
        return self._L

    @property
    def gram(self):
        """The homotopy solver's tensors on this dictionary's device (built on first use)."""
        if self._gram is None:
            from .homotopy import GramCache

            self._gram = GramCache(self.D_np, self.device_name)
        return self._gram

    @property
    def G64(self) -> np.ndarray:
        if self._G64 is None:
            D = self.D_np.astype(np.float64)
            self._G64 = np.asfortranarray(D.T @ D)
        return self._G64


def fista(Y, dictionary: Dictionary, lam: float, *, max_iter: int = 500, tol: float = 1e-4,
          init=None, check_every: int = 5):
    """Batched FISTA with per-row adaptive restart; returns (codes tensor (n, K), iterations run).

    Rows whose largest coefficient change over ``check_every`` iterations falls below ``tol`` ×
    (their largest coefficient) leave the batch, so a batch costs what its slow rows need.
    The product uses the Gram matrix when the dictionary is not much taller than wide.
    """
    torch = _torch()
    dic = dictionary
    Y = _as_tensor(Y, dic.device)
    n, K = Y.shape[0], dic.K
    step = 1.0 / dic.L
    thr = lam * step
    C = Y @ dic.D                                          # Dᵀy, (n, K)
    use_gram = dic.d * 2 >= K
    out = torch.zeros((n, K), device=dic.device, dtype=torch.float32)
    if n == 0:
        return out, 0
    x = torch.zeros_like(C) if init is None else _as_tensor(init, dic.device).clone()
    # screening: a row whose correlations are all below λ has code 0 when started from 0
    idx = torch.arange(n, device=dic.device)
    if init is None:
        live = C.abs().amax(dim=1) > lam
        idx, x, C = idx[live], x[live], C[live]
        Yl = Y[live] if not use_gram else None
    else:
        Yl = Y if not use_gram else None
    z = x.clone()
    t = torch.ones(len(idx), 1, device=dic.device)
    x_check = x.clone()
    it = 0
    for it in range(1, max_iter + 1):
        if len(idx) == 0:
            break
        if use_gram:
            grad = z @ dic.G - C
        else:
            grad = (z @ dic.Dt - Yl) @ dic.D
        x_new = torch.nn.functional.softshrink(z - step * grad, thr) if thr > 0 else z - step * grad
        dx = x_new - x
        # adaptive restart: momentum that points uphill is dropped for that row
        restart = ((z - x_new) * dx).sum(dim=1, keepdim=True) > 0
        t = torch.where(restart, torch.ones_like(t), t)
        t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
        z = x_new + ((t - 1.0) / t_new) * dx
        x, t = x_new, t_new
        if it % check_every == 0 or it == max_iter:
            change = (x - x_check).abs().amax(dim=1)
            scale = x.abs().amax(dim=1).clamp_min(1e-12)
            done = change <= tol * scale
            if bool(done.any()):
                out[idx[done]] = x[done]
                keep = ~done
                idx, x, z, t, C = idx[keep], x[keep], z[keep], t[keep], C[keep]
                if Yl is not None:
                    Yl = Yl[keep]
            x_check = x.clone()
    if len(idx):
        out[idx] = x
    return out, it


def lasso_spams(Y: np.ndarray, dictionary: Dictionary, lam: float, threads: int = -1) -> np.ndarray:
    """SPAMS LARS-lasso with a precomputed Gram matrix (the fastest SPAMS mode measured here)."""
    import spams

    X = np.asfortranarray(np.asarray(Y, dtype=np.float64).T)
    q = np.asfortranarray(dictionary.D_np.astype(np.float64).T @ X)
    A = spams.lasso(X, Q=dictionary.G64, q=q, lambda1=float(lam), lambda2=0.0, mode=2,
                    numThreads=int(threads))
    return np.asarray(A.T.toarray(), dtype=np.float32)


def lasso(Y, dictionary, lam: float, *, solver: str = "auto", device: str = "cpu", max_iter: int = 500,
          tol: float = 1e-4, init=None) -> np.ndarray:
    """Codes (n, K) float32 for the rows of ``Y`` (n, d); ``dictionary`` a :class:`Dictionary` or an array."""
    if not isinstance(dictionary, Dictionary):
        dictionary = Dictionary(np.asarray(dictionary), device)
    name = pick_solver(solver, dictionary.device_name)
    Y = np.asarray(Y, dtype=np.float32) if not _is_tensor(Y) else Y
    if name == "spams":
        return lasso_spams(_to_numpy(Y), dictionary, lam)
    if name == "homotopy":
        return _to_numpy(lasso_exact(Y, dictionary, lam))
    A, _ = fista(Y, dictionary, lam, max_iter=max_iter, tol=tol, init=init)
    return _to_numpy(A)


def lasso_exact(Y, dictionary: Dictionary, lam: float):
    """Exact codes (torch tensor on the dictionary's device) by the batched homotopy, :data:`HOMOTOPY_BATCH`
    rows in flight.  A row the KKT certificate rejects twice (never seen on real or random data;
    possible with atoms nearly parallel to within float rounding) is finished by FISTA from its
    homotopy code, to a 1e-7 tolerance.

    On a CPU with T > 1 torch threads, T Python threads each code their own chunk of rows with one
    torch thread: a homotopy step is ~100 small torch calls, and splitting each of them over threads
    costs a barrier per call, which is slow and, when other processes share the cores, very slow.
    Measured on 2 cores, 20,000 real patches, A/B in one process: 0.78-0.92x the time of 2-thread torch
    calls on idle cores over several runs, 0.52x with two other jobs running; on a whole brain on idle
    cores within the noise.  The same codes for the same chunks of rows."""
    from .homotopy import lasso_homotopy

    torch = _torch()
    Y = _as_tensor(Y, dictionary.device)
    out = torch.empty((Y.shape[0], dictionary.K), dtype=torch.float32, device=dictionary.device)
    workers = torch.get_num_threads() if dictionary.device.type == "cpu" else 1
    rows_each = max(HOMOTOPY_BATCH // workers, 256)
    starts = range(0, Y.shape[0], rows_each)

    def code(start):
        rows = Y[start:start + rows_each]
        codes, uncertified = lasso_homotopy(rows, dictionary.gram, lam)
        if len(uncertified):
            polished, _ = fista(rows[uncertified], dictionary, lam, max_iter=5000, tol=1e-7,
                                init=codes[uncertified])
            codes[uncertified] = polished
        out[start:start + rows_each] = codes

    if workers < 2 or len(starts) < 2:
        for start in starts:
            code(start)
        return out
    from concurrent.futures import ThreadPoolExecutor

    torch.set_num_threads(1)   # per process: restored below, whatever happens
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="iqt-lasso") as pool:
            for _ in pool.map(code, starts):
                pass
    finally:
        torch.set_num_threads(workers)
    return out


def _is_tensor(x) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(x, torch.Tensor)


def _to_numpy(x) -> np.ndarray:
    if _is_tensor(x):
        return x.detach().to("cpu").numpy().astype(np.float32, copy=False)
    return np.asarray(x, dtype=np.float32)


# -- dictionary learning -------------------------------------------------------------------------
def learn_dictionary(X: np.ndarray, atoms: int, lam: float, *, iterations: int = 400, batch: int = 512,
                     seed: int = 0, solver: str = "auto", reporter=None) -> np.ndarray:
    """Online dictionary learning (Mairal, Bach, Ponce, Sapiro, JMLR 2010, algorithm 1 with
    mini-batches and their forgetting factor): returns D (d × atoms) with unit-norm columns.

    Each iteration codes a mini-batch of rows of ``X`` (n × d) with the lasso (λ = ``lam``),
    accumulates A = Σ a aᵀ and B = Σ x aᵀ, and updates every atom by one pass of block coordinate
    descent on the surrogate ½ tr(DᵀDA) − tr(DᵀB).  Atoms that stop being used are re-drawn from
    the data.  Deterministic for a given ``seed`` (the codes of the CPU solvers are).
    """
    from .progress import as_reporter

    reporter = as_reporter(reporter)
    X = np.asarray(X, dtype=np.float32)
    n, d = X.shape
    rng = np.random.default_rng(seed)
    norms = np.linalg.norm(X, axis=1)
    usable = np.flatnonzero(norms > 1e-6 * max(float(norms.max()), 1e-30))
    if len(usable) < atoms:
        from .errors import InputError

        raise InputError(f"dictionary learning needs at least {atoms} non-zero training patches (got {len(usable)})")
    D = X[rng.choice(usable, size=atoms, replace=False)].T.astype(np.float64)
    D /= np.linalg.norm(D, axis=0, keepdims=True)
    A = np.zeros((atoms, atoms))
    B = np.zeros((d, atoms))
    solver = pick_solver(solver, "cpu")   # exact codes by default: deterministic for a seed
    for t in range(1, iterations + 1):
        reporter((t - 1) / iterations, f"dictionary learning iteration {t}/{iterations}")
        xb = X[rng.integers(0, n, size=batch)]
        codes = lasso(xb, Dictionary(D.astype(np.float32), "cpu"), lam, solver=solver).astype(np.float64)
        # forgetting factor of Mairal et al. (section 3.4.3) for mini-batches of size η
        theta = t * batch if t < batch else batch * batch + t - batch
        beta = (theta + 1.0 - batch) / (theta + 1.0)
        A = beta * A + codes.T @ codes
        B = beta * B + xb.T.astype(np.float64) @ codes
        for j in range(atoms):
            if A[j, j] < 1e-10:
                # an unused atom: restart it on a random patch (keeps the dictionary fully used)
                u = X[usable[rng.integers(0, len(usable))]].astype(np.float64)
                D[:, j] = u / np.linalg.norm(u)
                continue
            u = (B[:, j] - D @ A[:, j]) / A[j, j] + D[:, j]
            D[:, j] = u / max(np.linalg.norm(u), 1.0)
    # atoms shorter than 1 are rescaled to unit norm (the solvers and the code scale assume it)
    D /= np.maximum(np.linalg.norm(D, axis=0, keepdims=True), 1e-12)
    reporter(1.0, "dictionary learned", force=True)
    return D.astype(np.float32)
