"""Render the extension's icon and its result figure from real data (run: python Resources/make_images.py).

- ``Resources/IQTEnhance.png`` and ``IQTEnhance/Resources/Icons/IQTEnhance.png`` (128x128): a coronal
  Colin27 slice, left half as acquired with 6 mm slices (blocky), right half at 1 mm.
- ``Resources/Screenshots/IQTEnhance-result-colin27.png``: not a screenshot of the panel (no Slicer GUI
  was available where it was made) but the result the panel produces: Colin27 (held out from training)
  degraded to 4 mm slices at SNR 20, enhanced by each method that has a shipped model, against the
  1 mm reference, with NRMSE in the brain mask.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "IQTEnhance"))

from IQTEnhanceLib import api  # noqa: E402
from IQTEnhanceLib.data import load_dataset  # noqa: E402
from IQTEnhanceLib.metrics import evaluate  # noqa: E402
from IQTEnhanceLib.simulate import simulate  # noqa: E402
from IQTEnhanceSlicer import panel  # noqa: E402

FACTOR = 4


def coronal(volume_array: np.ndarray, j: int) -> np.ndarray:
    """A coronal view ([k, i] at row j), superior up."""
    return volume_array[:, j, :][::-1]


def icon(path_list):
    from PIL import Image, ImageDraw

    hq, mask = load_dataset("colin27_t1")
    lq, _ = simulate(hq, factor=6, axis="k", snr=None, seed=0)
    blocky = api.enhance(lq, "nearest").volume.array
    n = min(blocky.shape[0], hq.array.shape[0])
    j = int(np.argmax((mask.array > 0).sum(axis=(0, 2))))
    left, right = coronal(blocky[:n], j), coronal(hq.array[:n], j)
    rows = np.nonzero(coronal(mask.array[:n], j).any(axis=1))[0]
    cols = np.nonzero(coronal(mask.array[:n], j).any(axis=0))[0]
    side = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 6
    r0 = max(0, (rows[0] + rows[-1] - side) // 2)
    c0 = max(0, (cols[0] + cols[-1] - side) // 2)
    left, right = left[r0:r0 + side, c0:c0 + side], right[r0:r0 + side, c0:c0 + side]
    half = left.shape[1] // 2
    image = np.concatenate([left[:, :half], right[:, half:]], axis=1)
    image = np.clip(image / np.percentile(hq.array[mask.array > 0], 99.5), 0, 1)
    picture = Image.fromarray((image * 255).astype(np.uint8)).resize((112, 112), Image.BICUBIC).convert("RGB")
    canvas = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
    mask = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, 127, 127), radius=22, fill=255)
    canvas.paste(Image.new("RGB", (128, 128), (34, 74, 128)), (0, 0), mask)
    canvas.paste(picture, (8, 8))
    draw = ImageDraw.Draw(canvas)
    draw.line((64, 8, 64, 119), fill=(255, 196, 0), width=3)  # as acquired | enhanced
    for path in path_list:
        path.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(path)
        print("wrote", path)


def result_figure(path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hq, mask = load_dataset("colin27_t1")
    lq, _ = simulate(hq, mask=mask, factor=FACTOR, axis="k", snr=20.0, seed=0)
    learned = [e.name for e in panel.method_entries() if e.ready and e.name not in panel.INTERPOLATION_METHODS]
    methods = ["trilinear"] + learned[:3]
    panels = [("LQ input: 4 mm slices, SNR 20", api.enhance(lq, "nearest").volume, None)]
    for method in methods:
        out = api.enhance(lq, method, device="cpu").volume
        score = evaluate(out, hq, mask)["nrmse"]
        panels.append((f"{api.get_method(method).label} ×{FACTOR}\nNRMSE {score:.4f}", out, score))
    panels.append(("1 mm reference (Colin27)", hq, None))
    j = int(np.argmax((mask.array > 0).sum(axis=(0, 2))))  # the coronal row with most brain
    vmax = float(np.percentile(hq.array[mask.array > 0], 99.5))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.9), dpi=100)
    for ax, (title, volume, _score) in zip(axes, panels):
        n = min(volume.array.shape[0], hq.array.shape[0])
        ax.imshow(coronal(volume.array[:n], j), cmap="gray", vmin=0, vmax=vmax, aspect=1.0)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle("IQTEnhance on a held-out subject (Colin27), coronal view across the thick slices", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print("wrote", path, "methods:", methods)


if __name__ == "__main__":
    icon([ROOT / "Resources" / "IQTEnhance.png", ROOT / "IQTEnhance" / "Resources" / "Icons" / "IQTEnhance.png"])
    result_figure(ROOT / "Resources" / "Screenshots" / "IQTEnhance-result-colin27.png")
