"""IQT-DL and IQT-DDL networks, in the canonical frame: input [batch, 1, M, A, B] (M thick LQ slices,
thick axis first), output [batch, 1, M*f, A, B] on the HQ grid.

Design measured on our task (a prototype on 2 CPU cores, 10 min of training):
3 levels on the LQ grid, two 3×3×3 convolutions per level with LeakyReLU and no normalisation,
pooling (1, 2, 2) only (a thick-slice patch is only ~8 slices deep: never pool along it), nearest
up-sampling, concatenated skips, and a head predicting the *residual* over the linear up-sampling
of the input.  With 16 base filters the prototype there reported Colin27 NRMSE 0.0478 (DL) and 0.0487
(DDL) against 0.0805 for trilinear interpolation.  This implementation does not reach that on 1 CPU
thread (Colin27 ×4 SNR 20, trilinear 0.0777): DL 0.0584 (20 min, shipped), 0.0577 (15 min, k-only
fixed SNR 20 training like the prototype's); DDL 0.0637 and 0.0630.  DDL's validation loss stalls at
≈0.69× the interpolation's whatever the body or tail (see DeepDictionaryNet), where DL's drops to 0.43-0.54×.

Training to convergence does not change that (one thread each, whole-head patches, 504 validation
patches, stopped when the validation loss improved < 1% over the last 20% of the steps): DL ran 7,000
steps (28k patches, 101 min) to 0.368× the interpolation's validation loss (0.637× trilinear's NRMSE
on the held-out template cubes) and scored Colin27 0.0585 (the 20-min model: 0.0584) and ICBM 2009a
0.0524 (0.0474); DDL with k-means atoms, the compensation branch and its own learning rate ran 3,500
steps (98 min) to 0.581× and scored Colin27 0.0641 (0.0637), ICBM 2009a 0.0584 (0.0584).  Lower
validation loss on held-out cubes of the training template did not carry over to Colin27.  The
cause is the intensity normalisation, not the template: a scan is normalised by the 99th percentile
of its head, and Colin27's bright scalp puts its brain at 0.71× the template's normalised intensity
(ICBM 2009a: 0.99×).  The same shipped DL scores Colin27 0.0554 when its LQ is normalised with the
template's scale (0.0593 as is), while linear regression, equivariant to the scale, scores 0.0600
either way.  Networks are therefore trained with a ±40% intensity jitter (``intensity_jitter``).

* :class:`UNet3D` (IQT-DL, after Lin et al. 2023): the head gives ``f`` channels per LQ voxel, one
  per HQ sub-slice, rearranged onto the HQ grid (a 1-D "pixel shuffle" along the thick axis).
* :class:`DeepDictionaryNet` (IQT-DDL, after Maeda's SRDD, ECCV 2022): a UNet++ body and a
  bottleneck tail give K logits per LQ voxel; their softmax weights the K atoms of an explicitly
  learned HQ dictionary (:attr:`DeepDictionaryNet.dictionary`, shape K × f × n × n: the HQ block
  that one LQ voxel becomes, optionally with an n × n in-plane neighbourhood).  The weighted atoms
  are placed on the HQ grid (a transposed convolution with the atoms as kernels, stride (f, 1, 1))
  and added to the compensation term, the linearly up-sampled input.  Trained from scratch its softmax
  learns slowly; started from a trained IQT-DL (:meth:`DeepDictionaryNet.start_from_unet`) it begins at
  that network's quality.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..methods.networks import DDL_GAINS

POOL = (1, 2, 2)          # never pool along the thick axis
SOFTPLUS_ONE = math.log(math.e - 1.0)   # softplus(SOFTPLUS_ONE) = 1
NEGATIVE_SLOPE = 0.1


def upsample_linear(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Linear interpolation along the thick axis onto the HQ grid.

    With ``align_corners=False`` HQ index n samples LQ coordinate (n + 0.5)/f - 0.5 = (n - (f-1)/2)/f,
    clamped at the ends: exactly :func:`..interpolation.upsample_array` (``"trilinear"``), which puts
    LQ voxel centres at slab centres (see :mod:`..grid`).
    """
    return F.interpolate(x, scale_factor=(float(factor), 1.0, 1.0), mode="trilinear", align_corners=False)


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1), nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1), nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
    )


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=POOL, mode="nearest")


class _PadInPlane(nn.Module):
    """Base: pads the in-plane axes (replicate) to a multiple of 2^(levels-1) so that any size works."""

    levels: int

    @property
    def multiple(self) -> int:
        return 2 ** (self.levels - 1)

    def _pad(self, x: torch.Tensor):
        m = self.multiple
        pa = (-x.shape[3]) % m
        pb = (-x.shape[4]) % m
        if pa or pb:
            x = F.pad(x, (0, pb, 0, pa, 0, 0), mode="replicate")
        return x, pa, pb


class UNetBody(nn.Module):
    """Plain U-Net feature extractor on the LQ grid: ``levels`` resolutions, widths base·2^l."""

    def __init__(self, base: int = 16, levels: int = 3, in_channels: int = 1):
        super().__init__()
        widths = [base * 2 ** level for level in range(levels)]
        self.encoders = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.encoders.append(conv_block(cin, w))
            cin = w
        self.decoders = nn.ModuleList(conv_block(widths[i] + widths[i + 1], widths[i]) for i in range(levels - 1))
        self.out_channels = widths[0]

    def forward(self, x):
        skips = []
        for n, enc in enumerate(self.encoders):
            x = enc(x if n == 0 else F.max_pool3d(x, POOL))
            skips.append(x)
        x = skips[-1]
        for i in reversed(range(len(self.decoders))):
            x = self.decoders[i](torch.cat([skips[i], _up(x)], dim=1))
        return x


class UNetPlusPlusBody(nn.Module):
    """Nested U-Net (UNet++, Zhou et al. 2018) with anisotropic pooling: node X[i][j] (depth i, j-th
    along the dense skip path) sees every earlier node of its depth and the up-sampled X[i+1][j-1]."""

    def __init__(self, base: int = 16, levels: int = 3, in_channels: int = 1):
        super().__init__()
        self.levels = levels
        self.widths = [base * 2 ** level for level in range(levels)]
        nodes = {}
        for i in range(levels):
            nodes[f"x{i}_0"] = conv_block(in_channels if i == 0 else self.widths[i - 1], self.widths[i])
        for j in range(1, levels):
            for i in range(levels - j):
                nodes[f"x{i}_{j}"] = conv_block(j * self.widths[i] + self.widths[i + 1], self.widths[i])
        self.nodes = nn.ModuleDict(nodes)
        self.out_channels = self.widths[0]

    def forward(self, x):
        grid = {}
        for i in range(self.levels):
            x = self.nodes[f"x{i}_0"](x if i == 0 else F.max_pool3d(x, POOL))
            grid[(i, 0)] = x
        for j in range(1, self.levels):
            for i in range(self.levels - j):
                inputs = [grid[(i, k)] for k in range(j)] + [_up(grid[(i + 1, j - 1)])]
                grid[(i, j)] = self.nodes[f"x{i}_{j}"](torch.cat(inputs, dim=1))
        return grid[(0, self.levels - 1)]

    @torch.no_grad()
    def copy_unet(self, unet: UNetBody) -> None:
        """Make this nested U-Net compute exactly ``unet``'s features.  X[i][0] take the U-Net's
        encoders; the last node of each depth, X[i][L-1-i], lies on the plain U-Net's decoder path and
        takes its decoder, with zero weights on the inputs from the nested nodes X[i][1..L-2-i].  Those
        nodes keep their initialisation: unused at first, they learn once training moves the zeros."""
        if len(unet.encoders) != self.levels or unet.out_channels != self.out_channels:
            raise ValueError(f"a U-Net of {len(unet.encoders)} levels and {unet.out_channels} base filters does "
                             f"not fit a UNet++ of {self.levels} levels and {self.out_channels}")
        for i, encoder in enumerate(unet.encoders):
            self.nodes[f"x{i}_0"].load_state_dict(encoder.state_dict())
        for i, decoder in enumerate(unet.decoders):
            j = self.levels - 1 - i
            node, w = self.nodes[f"x{i}_{j}"], self.widths[i]
            # the decoder sees [skip X[i][0], up(deeper)]; this node sees [X[i][0..j-1], up(X[i+1][j-1])]
            node[0].weight.zero_()
            node[0].weight[:, :w] = decoder[0].weight[:, :w]
            node[0].weight[:, j * w:] = decoder[0].weight[:, w:]
            node[0].bias.copy_(decoder[0].bias)
            node[2].load_state_dict(decoder[2].state_dict())


class UNet3D(_PadInPlane):
    """IQT-DL: anisotropic 3-D U-Net; HQ output = linear up-sampling + predicted residual."""

    def __init__(self, factor: int = 4, base: int = 16, levels: int = 3):
        super().__init__()
        self.factor = int(factor)
        self.levels = int(levels)
        self.body = UNetBody(base, levels)
        self.head = nn.Conv3d(self.body.out_channels, self.factor, 1)
        # zero-initialised head: the untrained network is exactly linear interpolation
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def residual(self, x):
        """The predicted HQ residual [batch, 1, M*f, A, B] (``x`` in-plane sizes are any)."""
        xp, pa, pb = self._pad(x)
        y = self.head(self.body(xp))
        y = y[..., : x.shape[3], : x.shape[4]]
        b, f, m, a, c = y.shape
        # channel s at LQ slice d is HQ slice d*f + s
        return y.permute(0, 2, 1, 3, 4).reshape(b, 1, m * f, a, c)

    def forward(self, x):
        return upsample_linear(x, self.factor) + self.residual(x)


class DictionaryGenerator(nn.Module):
    """SRDD's dictionary generator: a binary tree of 1×1 convolutions grown from one fixed random
    vector, doubling the number of leaves per level until there are K, then a 1×1 convolution to the
    atom's f·n·n values and tanh.  The atoms are a function of the generator's weights; the network
    stores and exports them like free atoms.  K must be a power of two."""

    def __init__(self, atoms: int, atom_values: int, width: int = 32):
        super().__init__()
        depth = int(atoms).bit_length() - 1
        if atoms < 2 or 2 ** depth != atoms:
            raise ValueError(f"the dictionary generator needs a power-of-two number of atoms (got {atoms})")
        self.width = int(width)
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("seed", torch.randn(1, self.width, 1, generator=generator))
        self.branches = nn.ModuleList(nn.Conv1d(self.width, 2 * self.width, 1) for _ in range(depth))
        self.out = nn.Conv1d(self.width, int(atom_values), 1)
        # atoms of std ~0.1 at the start, like the free dictionary's initialisation
        nn.init.normal_(self.out.weight, std=0.1 / math.sqrt(self.width))
        nn.init.zeros_(self.out.bias)

    def forward(self) -> torch.Tensor:
        x = self.seed
        for branch in self.branches:
            leaves = x.shape[2]
            x = F.leaky_relu(branch(x), NEGATIVE_SLOPE)           # [1, 2w, L]
            x = x.reshape(1, 2, self.width, leaves).permute(0, 2, 3, 1).reshape(1, self.width, 2 * leaves)
        return torch.tanh(self.out(x))[0].t()                     # [K, f·n·n]


class DeepDictionaryNet(_PadInPlane):
    """IQT-DDL: UNet++ → softmax coefficients over K learned HQ atoms → atoms placed on the HQ grid
    + the compensation term (linear up-sampling of the input).

    Variants after SRDD, all options of the model file:

    * ``generator``: the atoms come from :class:`DictionaryGenerator` instead of being free parameters;
    * ``compensation``: a second coefficient map over the same atoms placed half a block (f/2 HQ
      slices) further along the thick axis, fused with the main synthesis by a 3×1×1 convolution, so
      that block boundaries along the thick axis are covered twice;
    * ``logit_scale``: a fixed temperature on the logits (larger: sharper softmax sooner);
    * ``gain``: the softmax weights times a per-voxel gain predicted by the tail (one more channel per
      coefficient map), so that the atom mix (the shape of the residual) and its amplitude are learned
      apart: ``"signed"`` (1 + t, any sign: one atom serves an edge and its mirror image),
      ``"positive"`` (softplus, 1 at the start) or ``"none"`` (SRDD's convex combination of atoms, the
      default).  Measured: overfitting two real patches at Adam 1e-2, positive reached a 10× lower loss
      in 354 steps (none: 436), signed only 6× in 600.  In real training (shipped recipe, ±40% jitter,
      lr 1e-3, one thread) positive reached 0.654× the interpolation's validation loss at step 1500,
      then its gain died (softplus → 0 everywhere, logits' std 6·10⁴) and the output fell back to
      linear interpolation by step 2000.

    The atoms start centred (the generator's are centred in every forward pass), so zero logits
    (the untrained tail) give the mean atom 0 and the untrained network is exactly linear
    interpolation.

    Or the network starts as a trained IQT-DL (:meth:`start_from_unet`, training option ``init_from``):
    trained from scratch, the softmax synthesis learns slowly (the shipped recipe's validation loss
    flattened at 0.56× the interpolation's after 7,000 steps, where IQT-DL reached 0.27×; Colin27
    0.0646 against 0.0534), whatever the generator, compensation, K, atom initialisation, temperature,
    tail width or gain.  Started from a trained DL it begins at that DL's validation loss (0.266×)
    and Colin27 score, and fine-tuning at Adam 1e-4 improves on it (0.251× at step 1,500, stopped at
    convergence at 2,500; Colin27 0.0526 against the DL's 0.0534).  The atoms are then large and the
    softmax near uniform (largest weight ≈ 0.017 where uniform is 1/64): the synthesis is the U-Net's
    head written over a dictionary, with dense codes.
    """

    FUSE_START = 0.5   # the fusion's initial weight on each synthesis (main, shifted)

    def __init__(self, factor: int = 4, base: int = 16, levels: int = 3, atoms: int = 64, atom_size: int = 1,
                 tail_width: int = 0, generator: bool = False, compensation: bool = False,
                 logit_scale: float = 1.0, gain: str = "none"):
        super().__init__()
        if atom_size < 1 or atom_size % 2 == 0:
            raise ValueError(f"atom_size must be odd (got {atom_size})")
        if gain not in DDL_GAINS:
            raise ValueError(f"gain must be one of {', '.join(DDL_GAINS)} (got {gain!r})")
        self.gain = gain
        self.factor = int(factor)
        self.levels = int(levels)
        self.atoms = int(atoms)
        self.atom_size = int(atom_size)
        self.logit_scale = float(logit_scale)
        self.body = UNetPlusPlusBody(base, levels)
        c = self.body.out_channels
        self.tail_width = int(tail_width or c)
        # SRDD's bottleneck tail: 1×1 convolutions to one logit per atom.  Softmax coefficients learn
        # slower than IQT-DL's free head (the output is a convex combination of atoms).  Overfitting
        # two real patches for 300 steps at Adam 3e-3: loss ÷2.7 with this tail (16 wide) and atoms
        # of std 0.1, ÷14 with a 64-wide tail and atoms of std 1.0 (IQT-DL: ÷10 in 260 steps).  In
        # real training (Adam 1e-3, 20 min on one CPU thread) the wide variant made no difference
        # (validation 0.694× vs 0.697× the interpolation's loss at ~1200 steps) and at 3e-3 it was
        # unstable.  15-min runs (1 thread, validation loss ÷ the interpolation's at ~1200 steps) gave
        # 0.703 with a plain U-Net body and a direct 1×1 head, 0.699 with UNet++ and a direct head,
        # 0.685/0.689 with logits ×10 and atoms of std 0.1/0.3, against 0.69 for these defaults.
        heads = self.heads = 2 if compensation else 1
        gains = heads if gain != "none" else 0
        self.tail = nn.Sequential(nn.Conv3d(c, self.tail_width, 1), nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
                                  nn.Conv3d(self.tail_width, heads * self.atoms + gains, 1))
        # zero logits → uniform coefficients → the mean atom, which is 0: linear interpolation
        nn.init.zeros_(self.tail[-1].weight)
        nn.init.zeros_(self.tail[-1].bias)
        values = self.factor * self.atom_size * self.atom_size
        if generator:
            self.generator = DictionaryGenerator(self.atoms, values)
        else:
            self.generator = None
            generator_ = torch.Generator().manual_seed(0)
            atoms_init = 0.1 * torch.randn(self.atoms, self.factor, self.atom_size, self.atom_size,
                                           generator=generator_)
            self.dictionary = nn.Parameter(atoms_init - atoms_init.mean(dim=0, keepdim=True))
        if compensation:
            # fuses (main, shifted) syntheses; starts as their mean (both 0 untrained)
            self.fuse = nn.Conv3d(2, 1, (3, 1, 1), padding=(1, 0, 0))
            with torch.no_grad():
                self.fuse.weight.zero_()
                self.fuse.weight[0, :, 1] = self.FUSE_START
                self.fuse.bias.zero_()
        else:
            self.fuse = None

    @torch.no_grad()
    def start_from_unet(self, unet: UNet3D, atoms: torch.Tensor) -> None:
        """Start as a trained IQT-DL: the body computes ``unet``'s features (:meth:`UNetPlusPlusBody.copy_unet`)
        and the tail and the atoms reproduce its linear head through the softmax.

        With centred atoms D (K × f) and logits z = D v, the softmax weights are (1 + z_k)/K to first
        order, so the synthesis gives Σ_k (1 + z_k)/K · d_k = C v with C = DᵀD/K.  The tail therefore
        gets logits D C⁻¹ (W h + b) for the U-Net's head W, b (times 2 with the compensation branch: the
        fusion starts at half the main synthesis; the shifted map starts uniform, i.e. at the mean atom
        0).  Its first layer passes the features through the LeakyReLU as [h, -h] (it needs a tail at
        least twice as wide as the features): lrelu(h) - lrelu(-h) = (1 + slope) h.  The error of the
        first-order expansion is about |z|/2 of the residual: large atoms keep z small (see
        :func:`..training.linear_regime_scale`).  Any gain channel starts at 0, i.e. gain 1."""
        c, k, f = self.body.out_channels, self.atoms, self.factor
        if self.generator is not None:
            raise ValueError("a DDL started from a U-Net needs free atoms, not the dictionary generator")
        if unet.factor != f:
            raise ValueError(f"the U-Net up-samples ×{unet.factor}, this network ×{f}")
        if self.tail_width < 2 * c:
            raise ValueError(f"a DDL started from a U-Net needs a tail at least {2 * c} wide (has {self.tail_width})")
        self.body.copy_unet(unet.body)
        d = atoms.reshape(k, f).to(torch.float64)
        d = d - d.mean(dim=0, keepdim=True)
        gram = d.t() @ d / k
        boost = self.main_boost
        head_w = unet.head.weight.reshape(f, c).to(torch.float64)
        head_b = unet.head.bias.to(torch.float64)
        mixing = boost * d @ torch.linalg.solve(gram, head_w) / self.logit_scale        # K × c
        offset = boost * d @ torch.linalg.solve(gram, head_b) / self.logit_scale        # K
        first, last = self.tail[0], self.tail[2]
        first.weight.zero_()
        first.bias.zero_()
        eye = torch.eye(c, dtype=first.weight.dtype)
        first.weight[:c, :, 0, 0, 0] = eye
        first.weight[c: 2 * c, :, 0, 0, 0] = -eye
        last.weight.zero_()
        last.bias.zero_()
        last.weight[:k, :c, 0, 0, 0] = (mixing / (1.0 + NEGATIVE_SLOPE)).to(last.weight.dtype)
        last.weight[:k, c: 2 * c, 0, 0, 0] = (-mixing / (1.0 + NEGATIVE_SLOPE)).to(last.weight.dtype)
        last.bias[:k] = offset.to(last.bias.dtype)
        n = self.atom_size
        self.dictionary.zero_()
        self.dictionary[:, :, n // 2, n // 2] = d.to(self.dictionary.dtype)

    @property
    def main_boost(self) -> float:
        """What the main synthesis is multiplied by to give the residual at the start: 1, or the inverse
        of the fusion's initial weight with the compensation branch."""
        return 1.0 if self.fuse is None else 1.0 / self.FUSE_START

    def atoms_tensor(self) -> torch.Tensor:
        """The HQ atoms [K, f, n, n]: the free parameter ``dictionary`` (centred when initialised), or
        the generator's output centred over the atoms."""
        if self.generator is None:
            return self.dictionary
        atoms = self.generator().reshape(self.atoms, self.factor, self.atom_size, self.atom_size)
        return atoms - atoms.mean(dim=0, keepdim=True)

    def dictionary_parameters(self) -> list:
        """The parameters that make the atoms (their own learning rate in training)."""
        return list(self.generator.parameters()) if self.generator is not None else [self.dictionary]

    def logits(self, x):
        xp, pa, pb = self._pad(x)
        return self.logit_scale * self.tail(self.body(xp))[..., : x.shape[3], : x.shape[4]]

    def coefficients(self, x):
        """Softmax coefficients [batch, K, M, A, B] (SRDD: more stable than ReLU codes), times the
        per-voxel gain where the network has one; with the compensation branch, [batch, 2K, ...]:
        main then compensation coefficients."""
        out = self.logits(x).contiguous()
        b, _, m, a, c = out.shape
        k = self.heads * self.atoms
        coefficients = torch.softmax(out[:, :k].reshape(b, self.heads, self.atoms, m, a, c), dim=2)
        if self.gain != "none":
            coefficients = coefficients * self._gains(out[:, k:]).unsqueeze(2)
        return coefficients.reshape(b, k, m, a, c)

    def _gains(self, raw):
        """The per-voxel gains from the tail's gain channels: the raw output t (0 at the start) gives
        gain 1 at the start, whatever the kind."""
        t = raw / self.logit_scale
        return 1.0 + t if self.gain == "signed" else F.softplus(t + SOFTPLUS_ONE)

    def synthesize(self, coefficients, dictionary=None):
        """Σ_k c_k(voxel) · atom_k placed on the HQ grid: [batch, 1, M*f, A, B]."""
        atoms = self.atoms_tensor() if dictionary is None else dictionary
        n = self.atom_size
        if n == 1:
            # same sum as the transposed convolution below, as one matrix product (K×f): on 2 CPU
            # cores it is faster than conv_transpose3d with a (f, 1, 1) kernel
            y = torch.einsum("bkmac,kf->bmfac", coefficients, atoms[:, :, 0, 0])
            b, m, f, a, c = y.shape
            return y.reshape(b, 1, m * f, a, c)
        kernel = atoms.unsqueeze(1)  # (K, 1, f, n, n): in_channels=K, out_channels=1
        return F.conv_transpose3d(coefficients, kernel, stride=(self.factor, 1, 1), padding=(0, n // 2, n // 2))

    def _syntheses_per_voxel(self, x):
        """For 1×1 atoms, the (main, shifted or None) syntheses [batch, 1, M*f, A, B] computed with the
        atoms along the last axis: the logits are channels-last in memory on the CPU, and a softmax and a
        product over the innermost axis are fast.  The same sums as :meth:`_syntheses_by_convolution`
        (:meth:`coefficients` + :meth:`synthesize`), which took 2/3 of a DDL forward pass on 2 CPU cores
        (12×96×96 tiles, batch 2: 1.1 s of 1.2 s; whole brain 19.4 s against 11.6 s now)."""
        z = self.logits(x).permute(0, 2, 3, 4, 1)                       # [b, M, A, B, channels]
        b, m, a, c, _ = z.shape
        k = self.heads * self.atoms
        weights = torch.softmax(z[..., :k].reshape(b, m, a, c, self.heads, self.atoms), dim=-1)
        if self.gain != "none":
            weights = weights * self._gains(z[..., k:]).unsqueeze(-1)
        y = weights @ self.atoms_tensor()[:, :, 0, 0]                    # [b, M, A, B, heads, f]
        both = y.permute(0, 4, 1, 5, 2, 3).reshape(b, self.heads, m * self.factor, a, c)
        return both[:, :1], (both[:, 1:] if self.fuse is not None else None)

    def _syntheses_by_convolution(self, x):
        """The (main, shifted or None) syntheses from the coefficient maps, for atoms of any size."""
        coefficients = self.coefficients(x)
        atoms = self.atoms_tensor()
        main = self.synthesize(coefficients[:, : self.atoms], atoms)
        shifted = self.synthesize(coefficients[:, self.atoms:], atoms) if self.fuse is not None else None
        return main, shifted

    def residual(self, x):
        syntheses = self._syntheses_per_voxel if self.atom_size == 1 else self._syntheses_by_convolution
        return self._combine(*syntheses(x))

    def _combine(self, main, shifted):
        """The residual from the (main, shifted or None) syntheses of either path."""
        if self.fuse is None:
            return main
        # the compensation atoms cover HQ slices [m·f + f/2, (m+1)·f + f/2): the boundary between
        # LQ slices m and m+1 falls inside an atom
        shift = self.factor // 2
        shifted = F.pad(shifted, (0, 0, 0, 0, shift, 0))[:, :, : main.shape[2]]
        return self.fuse(torch.cat([main, shifted], dim=1))

    def forward(self, x):
        return upsample_linear(x, self.factor) + self.residual(x)


def use_channels_last(net: nn.Module, device: str) -> nn.Module:
    """On the CPU, channels-last 3-D convolutions (oneDNN) are faster: measured on 2 shared cores,
    one thread, batch 4 of 8×32×32: a training step 1.6 s instead of 1.9-2.3 s (DL) and 2.0 s
    instead of 2.7 s (DDL); inference of a 16×128×128 tile 1.3× faster.  Inputs follow the layout
    of the first convolution's weight; results are the same up to float rounding."""
    if device == "cpu":
        for module in net.modules():
            if isinstance(module, nn.Conv3d):
                module.to(memory_format=torch.channels_last_3d)
    return net


def contiguous_state(net: nn.Module) -> dict:
    """A state dict in the standard layout (whatever the modules' memory format), on the CPU."""
    return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}


ARCHITECTURES = {"dl": "unet3d", "ddl": "unetpp3d-dictionary"}


def build_network(method: str, factor: int, base_filters: int = 16, levels: int = 3, atoms: int = 64,
                  atom_size: int = 1, tail_width: int = 0, generator: bool = False, compensation: bool = False,
                  logit_scale: float = 1.0, gain: str = "none") -> nn.Module:
    if method == "dl":
        return UNet3D(factor, base_filters, levels)
    if method == "ddl":
        return DeepDictionaryNet(factor, base_filters, levels, atoms, atom_size, tail_width, generator,
                                 compensation, logit_scale, gain)
    raise ValueError(f"no network for method {method!r}")


def count_parameters(net: nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))
