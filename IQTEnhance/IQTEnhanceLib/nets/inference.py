"""Sliding-window inference of a network over a whole LQ volume (canonical frame, thick axis first).

Tiles of ``tile`` LQ voxels overlap by ``overlap`` (a fraction of the tile) and their HQ outputs
are blended with a Gaussian window (:func:`..patches.gaussian_window`, as in nnU-Net and MONAI),
so tile borders, where the network lacks context, hardly count.  Memory is bounded: the
accumulator (2 × the HQ output, float32) plus one batch of tiles on the device.  Any volume size
works: a volume smaller than a tile is padded (mirror) and the output cropped.

Progress and cooperative cancel happen between batches (:class:`..progress.Reporter`).
"""
from __future__ import annotations

import math

import numpy as np

from ..interpolation import upsample_array
from ..patches import PatchAccumulator, gaussian_window, patch_positions

# Tile sizes (LQ voxels, thick × in-plane × in-plane).  Bigger tiles waste less work on the
# overlapping borders; the networks are fully convolutional, so a tile may be larger than the
# training patches.  On the CPU 12 × 96 × 96 with overlap 0.25 covers each voxel ~2.4 times
# instead of ~8 times for half-tile strides (measured in Testing/benchmarks/bench_networks.py).
CPU_TILE = (12, 96, 96)
CUDA_TILE = (16, 160, 160)


def plan_axis(size: int, max_tile: int, overlap: float, multiple: int = 1) -> tuple:
    """(tile, stride) along one axis: the fewest tiles of at most ``max_tile`` voxels that overlap by
    at least ``overlap``, made as small as that allows (rounded up to ``multiple``).  Shrinking the
    tiles to fit the volume wastes less work than fixed tiles plus a last tile flush with the end:
    Colin27 at ×4 (45×217×181 LQ voxels), tiles ≤ 12×96×96, overlap 0.25: 3.6 M tile voxels instead
    of 5.0 M (the volume has 1.8 M)."""
    size, max_tile = int(size), max(int(max_tile), multiple)
    max_tile = max_tile // multiple * multiple
    if size <= max_tile:
        tile = int(math.ceil(size / multiple) * multiple)
        return tile, tile
    n = int(math.ceil((size - max_tile) / max(max_tile * (1.0 - overlap), 1.0))) + 1
    tile = int(math.ceil(size / (n - (n - 1) * overlap)))
    tile = min(max_tile, int(math.ceil(tile / multiple) * multiple))
    stride = max(1, int(math.ceil((size - tile) / (n - 1))))
    return tile, stride


def resolve_tile(lq_shape, tile_thick: int, tile_inplane: int, multiple: int, device: str,
                 overlap: float = 0.25) -> tuple:
    """(tile, stride) actually used: tiles of at most the requested (or default) size, fitted to the
    volume; in-plane sizes are multiples of what the network's pooling needs."""
    default = CUDA_TILE if device == "cuda" else CPU_TILE
    wanted = (tile_thick or default[0], tile_inplane or default[1], tile_inplane or default[2])
    plans = [plan_axis(s, w, overlap, 1 if axis == 0 else multiple)
             for axis, (s, w) in enumerate(zip(lq_shape, wanted))]
    return tuple(p[0] for p in plans), tuple(p[1] for p in plans)


def _pad_to(array: np.ndarray, shape) -> np.ndarray:
    pads = [(0, max(0, int(s) - n)) for n, s in zip(array.shape, shape)]
    if not any(p[1] for p in pads):
        return array
    # mirror padding keeps edge statistics natural for a CNN; numpy reflects repeatedly when the
    # pad is longer than the axis, and a single voxel can only be repeated
    mode = "reflect" if min(array.shape) > 1 else "edge"
    return np.pad(array, pads, mode=mode)


def _bytes_per_tile(net, tile) -> float:
    """A generous estimate of the device memory one tile needs at inference: every feature map of
    the widest level kept alive at once, plus the K coefficient maps of IQT-DDL."""
    voxels = float(np.prod(tile))
    base = getattr(getattr(net, "body", None), "out_channels", 16)
    channels = 12 * base + 3 * getattr(net, "atoms", 0) + 4 * net.factor
    return voxels * channels * 4.0 * 2.0


def auto_batch_size(net, tile, device: str) -> int:
    """Tiles per batch: on CUDA as many as half the free memory holds (at most 64); on the CPU 2
    (bigger batches do not run faster on 2 cores, they only take memory)."""
    if device != "cuda":
        return 2
    import torch

    free, _total = torch.cuda.mem_get_info()
    return int(max(1, min(64, (0.5 * free) // _bytes_per_tile(net, tile))))


def sliding_window(net, lq_c: np.ndarray, *, device: str = "cpu", tile_thick: int = 0, tile_inplane: int = 0,
                   overlap: float = 0.25, batch_size: int = 0, reporter=None) -> np.ndarray:
    """Run ``net`` (LQ [b, 1, M, A, B] → HQ [b, 1, M*f, A, B]) over ``lq_c`` [M, A, B]; returns HQ
    [M*f, A, B] float32.  ``reporter(fraction, message)`` is called between batches and raises
    :class:`~..errors.CancelledError` on cancel."""
    import torch

    from ..errors import InputError

    if not 0.0 <= float(overlap) < 1.0:
        raise InputError(f"overlap must be in [0, 1) (got {overlap})")
    lq_c = np.asarray(lq_c, dtype=np.float32)
    f = int(net.factor)
    tile, stride = resolve_tile(lq_c.shape, tile_thick, tile_inplane, net.multiple, device, overlap)
    padded = _pad_to(lq_c, tile)
    hq_tile = (tile[0] * f, tile[1], tile[2])
    positions = patch_positions(padded.shape, tile, stride)
    window = gaussian_window(hq_tile)
    acc = PatchAccumulator((padded.shape[0] * f,) + padded.shape[1:])
    batch = int(batch_size) if batch_size and batch_size > 0 else auto_batch_size(net, tile, device)
    total = len(positions)
    skipped = False
    if reporter is not None:
        reporter(0.0, f"{total} tiles of {tile[0]}×{tile[1]}×{tile[2]} LQ voxels, {batch} per batch", force=True)
    net.eval()
    done = 0
    with torch.inference_mode():
        while done < total:
            if reporter is not None:
                reporter.check_cancel()
            chunk = positions[done:done + batch]
            tiles = np.stack([padded[a:a + tile[0], b:b + tile[1], c:c + tile[2]] for a, b, c in chunk])
            # an all-zero tile (background of a skull-stripped scan, padding) is left to the fill
            busy = np.abs(tiles).reshape(len(tiles), -1).max(axis=1) > 0
            if busy.any():
                x = torch.from_numpy(np.ascontiguousarray(tiles[busy])[:, None]).to(device)
                try:
                    y = net(x)[:, 0].float().cpu().numpy()
                except torch.cuda.OutOfMemoryError:
                    if batch == 1:
                        raise
                    torch.cuda.empty_cache()
                    batch = max(1, batch // 2)  # the estimate was too generous: retry smaller
                    continue
                hq_pos = chunk[busy].copy()
                hq_pos[:, 0] *= f
                acc.add(hq_pos, y, window)
            skipped = skipped or not busy.all()
            done += len(chunk)
            if reporter is not None:
                reporter(done / total, f"enhanced {done}/{total} tiles")
    fill = upsample_array(padded, f, 0, "trilinear") if skipped else 0.0
    out = acc.result(fill)
    return np.ascontiguousarray(out[: lq_c.shape[0] * f, : lq_c.shape[1], : lq_c.shape[2]])
