"""An exact batched lasso in torch: the LARS-lasso homotopy (Efron et al. 2004; Osborne et al. 2000),
the algorithm of SPAMS's ``lasso``, run for a whole batch of patches in lockstep.

For every row y of Y it returns the minimiser of ½‖D a − y‖² + λ‖a‖₁ (D: d × K, atoms in columns).

How (one Python step = a handful of torch calls over the whole batch, never a loop over patches):

* The path starts at λ₀ = max|Dᵀy| with the most correlated atom and follows the piecewise-linear
  solution a(λ) down to the requested λ.  Each step moves every row to its next event: an atom joins
  the active set (its correlation reaches the current λ), an active coefficient crosses zero and its
  atom leaves (the lasso modification of LARS), or the row reaches λ and stops.
* The step direction of a row is w = G_AA⁻¹ sign(c_A) on its active set A.  G_AA⁻¹ is kept per row in
  "slot" space (B × S × S, S ≥ the largest active set) and changed by one rank-one update per step,
  for a join (v = G_AA⁻¹ G_Aj − e_k, σ = 1/α with α the Schur complement) as for a leave
  (v = G_AA⁻¹ e_k, σ = −1/(G_AA⁻¹)_kk).  An atom whose Schur complement is ~0 (a duplicate, or one in the
  span of the active atoms) is excluded for that row: it can never be needed for an optimal code.
* The correlation change of every atom, a = G[:, A] w, is a weighted sum of the active atoms' rows
  of the Gram matrix: one ``embedding_bag`` call per step.  Measured on 2 CPU cores: 2.5x faster than
  the two dense products Dᵀ(D_A w), and ~10x faster than a batched matrix-vector product (which torch
  runs at ~2 GFLOP/s for these shapes).  The direction w itself follows each update without a
  product (recomputed from G_AA⁻¹ every 8 steps against drift).
* The path runs in float32 (correlations and the small per-row state).  It only has to find the
  active set and its signs: the codes are then refined in float64 against the exact correlations
  (Newton steps G_AA a_A = Dᵀ_A y − λ s_A with the path's G_AA⁻¹, at most 3) and certified by the
  optimality (KKT) conditions on all K atoms: |D_jᵀ(y − Da)| ≤ λ(1 + tol) everywhere, = λ s_j on the
  support, and sign(a_j) = s_j.  A row that fails the certificate (float32 rounding on a near-tie)
  is solved again with the path in float64.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError

# float32 rounding of the correlations is ~1e-6 of max|Dᵀy|; the KKT tolerance sits well above it.
KKT_TOL = 1e-4


def _torch():
    import torch

    return torch


class GramCache:
    """What the homotopy needs of one dictionary on one device, computed once: D (float32 and
    float64) and the Gram matrix in float64 padded with a zero row and column (index K = "empty
    slot"), with its float32 copy for the path's ``embedding_bag``."""

    def __init__(self, D: np.ndarray, device):
        torch = _torch()
        self.device = torch.device(device)
        D = np.asarray(D, dtype=np.float32)
        self.d, self.K = D.shape
        self.D = torch.as_tensor(np.ascontiguousarray(D), device=self.device)
        D64 = D.astype(np.float64)
        G = np.zeros((self.K + 1, self.K + 1))
        G[: self.K, : self.K] = D64.T @ D64
        self.G64 = torch.as_tensor(G, device=self.device)
        self.G32 = self.G64[:, : self.K].to(torch.float32).contiguous()   # (K+1, K): row K is 0
        self.diag64 = self.G64.diagonal().clone()
        self.D64 = torch.as_tensor(D64, device=self.device)


def lasso_homotopy(Y, cache: GramCache, lam: float, *, max_active: int | None = None) -> tuple:
    """Exact lasso codes (n, K) float32 for the rows of ``Y`` (n, d) by the batched LARS-lasso path,
    certified by the KKT conditions (see the module docstring), and the indices of rows that could
    not be certified (none on every problem measured; the caller polishes them).  ``lam`` > 0."""
    torch = _torch()
    lam = float(lam)
    if not np.isfinite(lam) or lam <= 0:
        raise InputError(f"the lasso needs a sparsity weight λ > 0 (got {lam!r}); λ = 0 is least squares, "
                         "which has no sparse solution")
    Y = torch.as_tensor(Y, device=cache.device, dtype=torch.float32)
    n = Y.shape[0]
    out = torch.zeros((n, cache.K), dtype=torch.float32, device=cache.device)
    none = torch.zeros(0, dtype=torch.long, device=cache.device)
    if n == 0:
        return out, none
    q = Y @ cache.D
    live = torch.nonzero(q.abs().amax(dim=1) > lam).squeeze(1)   # the others have code 0
    if len(live) == 0:
        return out, none
    cap = int(max_active or min(cache.K, cache.d + 1))
    codes, failed = _certified(Y[live], q[live], cache, lam, cap, torch.float32)
    still = none
    if len(failed):
        again, still = _certified(Y[live[failed]], q[live[failed]], cache, lam, cap, torch.float64)
        codes[failed] = again
        still = failed[still]
    out[live] = codes
    return out, live[still]


def _certified(Y, q, cache, lam, cap, dtype):
    """(codes float32, indices of rows whose codes fail the KKT certificate)."""
    torch = _torch()
    codes = torch.zeros((len(q), cache.K), dtype=torch.float32, device=q.device)
    failed = []
    for rows, slots, signs, beta, Minv in _path(q.to(dtype, copy=True), cache, lam, cap, dtype):
        chunk_codes, ok = _refine_and_check(Y[rows], slots, signs, beta, Minv, cache, lam)
        codes[rows] = chunk_codes.to(torch.float32)
        failed.append(rows[~ok])
    return codes, torch.cat(failed) if failed else torch.zeros(0, dtype=torch.long, device=q.device)


def _refine_and_check(Y, slots, signs, beta, Minv, cache, lam, iterations: int = 3):
    """Codes in float64 on each row's final active set, refined against the exact correlations
    (G_AA a_A = D_Aᵀy − λ s_A, Newton steps with the path's G_AA⁻¹), and the KKT certificate:
    |D_jᵀ(y − Da)| ≤ λ(1 + tol) for every atom, = λ s_j on the support, sign(a_j) = s_j (or 0)."""
    torch = _torch()
    K = cache.K
    f64 = torch.float64
    occupied = slots < K
    s = signs.to(f64) * occupied
    x = beta.to(f64) * occupied
    M = Minv.to(f64)
    Y64 = Y.to(f64)
    for iteration in range(iterations + 1):
        codes = torch.zeros((len(Y), K + 1), dtype=f64, device=Y.device).scatter_(1, slots, x)[:, :K]
        corr = (Y64 - codes @ cache.D64.t()) @ cache.D64                  # D_jᵀ(y − Da), exact in float64
        on_support = torch.cat([corr, torch.zeros_like(corr[:, :1])], dim=1).gather(1, slots)
        error = (on_support - lam * s) * occupied
        if iteration == iterations or float(error.abs().max()) <= 1e-9 * lam:
            break
        x = (x + (M * error[:, None, :]).sum(-1)) * occupied
    slack = KKT_TOL * lam
    bounded = (corr.abs() <= lam + slack).all(dim=1)
    equal = (error.abs() <= slack).all(dim=1)
    signed = ((x * s >= 0) | ~occupied).all(dim=1)      # a zero on the support is optimal too
    return codes, bounded & equal & signed


def _grow(x, size: int, dims: tuple, fill):
    """``x`` padded with ``fill`` along ``dims`` to ``size`` (the slot capacity doubles as needed)."""
    torch = _torch()
    pad = []
    for dim in range(x.dim() - 1, -1, -1):
        pad += [0, size - x.shape[dim]] if dim in dims else [0, 0]
    return torch.nn.functional.pad(x, pad, value=fill)


INF = float("inf")


def _path(c, cache, lam, cap, dtype):
    """Run the homotopy from the correlations ``c`` = Dᵀy (n, K).  Returns chunks of rows that
    finished together: (row indices, slots (m, S): atom index or K for an empty slot, signs, codes on
    the slots, G_AA⁻¹ in slot space)."""
    return _Homotopy(c, cache, lam, cap, dtype).run()


class _Homotopy:
    """The state of a batch of homotopy paths advanced in lockstep (see :func:`_path`).

    The passes over (n, K) arrays dominate a step's cost on a CPU, so the K-wide state is two
    arrays, e = λ − c and f = λ + c (the distances of each correlation to the two bounds), and an
    active atom is marked by e = f = ∞: the next join is the largest of (1 − a)/e and (1 + a)/f, with
    no masks and no clamping (eight passes per step; the straightforward form with c took twelve).
    Per row, the active atoms live in S slots (K marks an empty one) with their signs, codes
    ``beta``, the direction ``w`` = G_AA⁻¹ s and ``Minv`` = G_AA⁻¹ in slot space."""

    def __init__(self, c, cache, lam, cap, dtype):
        torch = self.torch = _torch()
        dev = self.device = c.device
        n, K = c.shape
        self.K, self.lam, self.dtype = K, lam, dtype
        self.G64, self.diag = cache.G64, cache.diag64
        self.G = cache.G32 if dtype == torch.float32 else self.G64[:, :K].contiguous()
        sd = self.sd = dtype   # small per-row state: float32 on the fast path (re-solved in float64), float64 on retry
        f64 = torch.float64
        self.cap = max(1, min(cap, K))
        self.S = min(16, self.cap)
        self.slots = torch.full((n, self.S), K, dtype=torch.long, device=dev)
        self.signs = torch.zeros((n, self.S), dtype=sd, device=dev)
        self.beta = torch.zeros((n, self.S), dtype=sd, device=dev)
        self.w = torch.zeros((n, self.S), dtype=sd, device=dev)
        self.Minv = torch.zeros((n, self.S, self.S), dtype=sd, device=dev)
        lam_now, j0 = c.abs().max(dim=1)
        self.lam_now = lam_now.to(f64)
        self.e = self.lam_now.to(dtype)[:, None] - c
        self.f = self.lam_now.to(dtype)[:, None] + c
        s0 = torch.sign(c.gather(1, j0[:, None]).squeeze(1)).to(sd)
        self.e.scatter_(1, j0[:, None], INF)
        self.f.scatter_(1, j0[:, None], INF)
        self.slots[:, 0] = j0
        self.signs[:, 0] = s0
        self.Minv[:, 0, 0] = (1.0 / self.diag.index_select(0, j0)).to(sd)
        self.w[:, 0] = self.Minv[:, 0, 0] * s0
        self.width = 1
        # an atom that left is kept out for one step (it sits on the bound); then its e, f are restored
        self.pending = torch.full((n,), K, dtype=torch.long, device=dev)
        self.pending_c = torch.zeros(n, dtype=f64, device=dev)
        self.index = torch.arange(n, device=dev)

    def run(self) -> list:
        chunks = []
        max_steps = 8 * self.cap + 64
        for step in range(1, max_steps + 1):
            stop, join, leave, j_join, k_leave, sign_join = self.move()
            join, degenerate, no_room, k_join = self.update_inverse(join, leave, j_join, k_leave, sign_join)
            self.bookkeep(join, leave, degenerate, no_room, j_join, k_join, k_leave, sign_join)
            if step % 8 == 0:   # the incremental direction drifts slowly: recompute it from G_AA⁻¹
                W = self.width
                self.w[:, :W] = (self.Minv[:, :W, :W] * self.signs[:, None, :W]).sum(-1)
            finished = stop if step < max_steps else self.torch.ones_like(stop)
            n_done = int(finished.sum())
            if n_done and (n_done * 16 >= len(self.index) or n_done == len(self.index) or step == max_steps):
                chunks.append(self.compact(finished))
                if not len(self.index):
                    break
            # rows at λ wait, frozen (their next γ is 0), for the next compaction
        return chunks

    def move(self) -> tuple:
        """Advance every row to its next event (an atom joins or leaves, or λ is reached)."""
        torch, K, dtype, f64 = self.torch, self.K, self.dtype, self.torch.float64
        W = self.width
        # correlation change per unit step, a = G[:, A] w: a weighted sum of W rows of the Gram matrix
        # per patch (embedding_bag: measured 2.5x faster than the dense product Dᵀ(D_A w) on 2 cores)
        a = torch.nn.functional.embedding_bag(self.slots[:, :W], self.G, per_sample_weights=self.w[:, :W].to(dtype),
                                              mode="sum")
        up = a.add_(1.0)                                             # 1 + a
        down = torch.rsub(up, 2.0)                                   # 1 - a
        ratio = down / self.e
        torch.maximum(ratio, up / self.f, out=ratio)
        r_join, j_join = ratio.max(dim=1)
        if bool(torch.isnan(r_join).any()):   # 0/0: an exact duplicate of an active atom, on its bound
            ratio.nan_to_num_(nan=-INF)
            r_join, j_join = ratio.max(dim=1)
        r_join = r_join.to(f64)
        g_join = torch.where(r_join > 0, 1.0 / r_join, torch.full_like(r_join, INF))
        # leaves: an active coefficient reaches zero
        t = -self.beta[:, :W] / self.w[:, :W]
        t = torch.where((self.slots[:, :W] < K) & (t > 0), t, torch.full_like(t, INF)).to(f64)
        g_leave, k_leave = t.min(dim=1)
        g_stop = self.lam_now - self.lam
        stop = g_stop <= torch.minimum(g_join, g_leave)
        leave = ~stop & (g_leave < g_join)
        join = ~stop & ~leave
        gamma = torch.minimum(g_stop, torch.minimum(g_join, g_leave)).clamp_min(0.0)
        g32 = gamma.to(dtype)[:, None]
        self.e.addcmul_(down, g32, value=-1.0)
        self.f.addcmul_(up, g32, value=-1.0)
        self.beta[:, :W].addcmul_(gamma.to(self.sd)[:, None], self.w[:, :W])
        lam_after = torch.where(stop, torch.full_like(self.lam_now, self.lam), self.lam_now - gamma)
        restore = torch.nonzero(self.pending < K).squeeze(1)
        if len(restore):   # the atom that left one step ago: its distances to the bounds again
            p = self.pending[restore]
            c_p = self.pending_c[restore] - gamma[restore] * (up[restore, p].to(f64) - 1.0)
            self.e[restore, p] = (lam_after[restore] - c_p).to(dtype)
            self.f[restore, p] = (lam_after[restore] + c_p).to(dtype)
        # the joining atom's sign: + if it reached the upper bound (e = 0), - for the lower one
        j_col = j_join[:, None]
        sign_join = torch.where(self.e.gather(1, j_col) <= self.f.gather(1, j_col), 1.0, -1.0).squeeze(1)
        self.lam_now = lam_after
        return stop, join, leave, j_join, k_leave, sign_join

    def update_inverse(self, join, leave, j_join, k_leave, sign_join) -> tuple:
        """One rank-one update of G_AA⁻¹ per row: join (v = u - e_k, σ = 1/α) or leave (v = M e_k,
        σ = -1/M_kk), on the first W2 slots (a join takes the first empty slot, at most slot W); the
        direction w follows without a product."""
        torch, sd, K = self.torch, self.sd, self.K
        W = self.width
        if W + 1 > self.S and self.S < self.cap:
            self.S = min(2 * self.S, self.cap)
            self.slots = _grow(self.slots, self.S, (1,), K)
            self.signs, self.beta, self.w = (_grow(x, self.S, (1,), 0.0) for x in (self.signs, self.beta, self.w))
            self.Minv = _grow(self.Minv, self.S, (1, 2), 0.0)
        W2 = min(W + 1, self.S)
        empty = self.slots[:, :W2] == K
        room = empty.any(dim=1)
        k_join = empty.to(torch.int8).argmax(dim=1)
        Mw = self.Minv[:, :W2, :W2]
        b = torch.take(self.G64, j_join[:, None] * (K + 1) + self.slots[:, :W2]).to(sd)   # G_{j,A} (0 on empty slots)
        u = (Mw * b[:, None, :]).sum(-1)
        d_join = self.diag.index_select(0, j_join).to(sd)
        alpha = d_join - (b * u).sum(1)
        degenerate = join & (alpha <= 1e-6 * d_join)
        no_room = join & ~room
        join = join & room & ~degenerate
        slot_ids = torch.arange(W2, device=self.device)
        k_l = k_leave.clamp(max=W2 - 1)
        m_col = Mw.gather(2, k_l[:, None, None].expand(-1, W2, 1)).squeeze(2)
        m_kk = m_col.gather(1, k_l[:, None]).squeeze(1)
        e_k = (slot_ids == k_join[:, None]).to(sd)
        v = torch.where(join[:, None], u - e_k, m_col)
        sigma = torch.where(join, 1.0 / alpha, torch.where(leave, -1.0 / m_kk, torch.zeros_like(alpha)))
        Mw.addcmul_((sigma[:, None] * v)[:, :, None], v[:, None, :])
        # join: w += (s_j - uᵀs)/α (e_k - u); leave: w -= w_k/M_kk M e_k
        ww = self.w[:, :W2]
        delta_join = (sign_join.to(sd) - (u * self.signs[:, :W2]).sum(1)) / alpha
        w_k = ww.gather(1, k_l[:, None]).squeeze(1)
        coef = torch.where(join, delta_join, torch.where(leave, -w_k / m_kk, torch.zeros_like(alpha)))
        ww.addcmul_(coef[:, None], torch.where(join[:, None], e_k - u, m_col))
        leaving = torch.nonzero(leave).squeeze(1)
        if len(leaving):   # the downdate leaves rounding residue in row/column k: make it exactly 0
            k_rows = k_leave[leaving]
            self.Minv[leaving, k_rows, :] = 0.0
            self.Minv[leaving, :, k_rows] = 0.0
            self.w[leaving, k_rows] = 0.0
        return join, degenerate, no_room, k_join

    def bookkeep(self, join, leave, degenerate, no_room, j_join, k_join, k_leave, sign_join) -> None:
        """The slots after the event: a joining atom takes its slot, a leaving one frees it."""
        torch, K = self.torch, self.K
        k_l = k_leave.clamp(max=self.slots.shape[1] - 1)
        sign_left = self.signs.gather(1, k_l[:, None]).squeeze(1).to(torch.float64)   # a leaving atom sits at c = λ s
        k = torch.where(join, k_join, k_leave)[:, None]
        atom = self.slots.gather(1, k).squeeze(1)
        self.slots.scatter_(1, k, torch.where(join, j_join, torch.where(leave, K, atom))[:, None])
        self.signs.scatter_(1, k, torch.where(join, sign_join.to(self.sd),
                                              torch.where(leave, 0.0, self.signs.gather(1, k).squeeze(1)))[:, None])
        self.beta.scatter_(1, k, torch.where(join | leave, 0.0, self.beta.gather(1, k).squeeze(1))[:, None])
        # an atom (nearly) in the span of the active ones is never needed: out for good, like a joined one
        out = torch.nonzero(join | degenerate | no_room).squeeze(1)
        self.e[out, j_join[out]] = INF
        self.f[out, j_join[out]] = INF
        self.pending = torch.where(leave, atom, K)
        self.pending_c = torch.where(leave, self.lam_now * sign_left, self.pending_c)
        if bool(join.any()):
            self.width = max(self.width, int(k_join[join].max()) + 1)

    def compact(self, finished) -> tuple:
        """Hand the finished rows out as one chunk and keep the others."""
        torch, K = self.torch, self.K
        rows = torch.nonzero(finished).squeeze(1)
        chunk = (self.index[rows], self.slots[rows], self.signs[rows], self.beta[rows], self.Minv[rows])
        keep = ~finished
        for name in ("index", "e", "f", "slots", "signs", "beta", "w", "Minv", "lam_now", "pending", "pending_c"):
            setattr(self, name, getattr(self, name)[keep])
        used = torch.nonzero((self.slots < K).any(dim=0))
        self.width = int(used.max()) + 1 if len(used) else 1
        return chunk
