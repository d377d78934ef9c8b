"""The study's figures: the same slice for every method, error maps, trust maps.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from IQTEnhanceApps.study.measures import BASELINE, STUDY_ORDER, aggregate, gain
from IQTEnhanceLib.files import atomic_path


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def _crop_box(mask2d: np.ndarray, margin: int = 3) -> tuple:
    idx = np.argwhere(mask2d)
    if not len(idx):
        return slice(None), slice(None)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask2d.shape)
    return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1]))


def _save_png(fig, path: Path, dpi: int = 90) -> None:
    """Save as a 192-colour palette PNG: a whole-brain slice figure of 9 columns drops from ~450 KB
    (RGBA) to ~200 KB at 90 dpi, under the 300 KB a committed figure may take, with no visible change."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    with Image.open(buf) as image:
        with atomic_path(path, ".png") as tmp:
            image.convert("RGB").quantize(colors=192).save(tmp, format="PNG", optimize=True)


def _colour(method: str):
    """One colour per method in every plot (tab10 in the study's row order)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    n = STUDY_ORDER.index(method) if method in STUDY_ORDER else len(STUDY_ORDER) + sum(map(ord, method)) % 2
    return cmap(n % 10)


def write_figures(results: dict, figure_data: dict, out_dir: Path) -> dict:
    """PNG figures (matplotlib, Agg): one per case (same coronal slice for every method, image and
    error map rows, SRep trust maps) and summary plots. Returns {key: (file name, caption)}."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    figures = {}
    for case in results["cases"]:
        fd = figure_data.get(case["name"])
        if fd and fd["outputs"]:
            figures[f"case_{case['name']}"] = _case_figure(plt, results, case, fd, out_dir)
    for draw in (_nrmse_figure, _gain_figure, _lesion_figure):
        figures.update(draw(plt, results, out_dir))
    return figures


def _case_figure(plt, results: dict, case: dict, fd: dict, out_dir: Path) -> tuple:
    methods = [m["name"] for m in results["methods"]]
    ks, is_ = _crop_box(fd["mask"])
    truth = fd["truth"][ks, is_]
    mask = fd["mask"][ks, is_]
    mean = float(truth[mask].mean()) if mask.any() else float(truth.mean())
    vmax = float(np.percentile(truth[mask], 99.5)) if mask.any() else float(truth.max())
    cols = ["truth"] + [m for m in methods if m in fd["outputs"]]
    trust_cols = [m for m in methods if m in fd["trust"]]
    aspect = truth.shape[0] / truth.shape[1]
    cols_all = cols + [f"trust:{m}" for m in trust_cols]
    fig, axes = plt.subplots(2, len(cols_all), figsize=(max(1.7 * len(cols_all), 6.5), 1.75 * 2 * aspect + 0.5),
                             squeeze=False)
    err_max = 0.3
    for n, m in enumerate(trust_cols):  # trust maps: extra columns at the right
        ax = axes[0, len(cols) + n]
        t = fd["trust"][m][ks, is_]
        top = float(np.percentile(t[mask], 99)) if mask.any() else float(t.max())
        ax.imshow(t, cmap="viridis", vmin=0, vmax=top if top > 0 else None, origin="lower", interpolation="nearest")
        ax.set_title(f"{m} trust map", fontsize=8)
        axes[1, len(cols) + n].axis("off")
    for n, col in enumerate(cols):
        img = truth if col == "truth" else fd["outputs"][col][ks, is_]
        axes[0, n].imshow(img, cmap="gray", vmin=0, vmax=vmax, origin="lower", interpolation="nearest")
        axes[0, n].set_title(col, fontsize=8)
        ax = axes[1, n]
        if col == "truth":
            ax.axis("off")
            ax.text(0.5, 0.5, "|error| / mean\n(0 to 0.3)", ha="center", va="center", fontsize=7,
                    transform=ax.transAxes)
        else:
            err = np.abs(img - truth) / mean * mask
            ax.imshow(err, cmap="magma", vmin=0, vmax=err_max, origin="lower", interpolation="nearest")
            ax.set_xlabel(f"slice NRMSE {np.sqrt(np.mean((img - truth)[mask] ** 2)) / mean:.3f}", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{case['title']} — coronal slice j={fd['j']} (thick axis vertical)", fontsize=9)
    fig.tight_layout()
    name = f"case_{case['name']}.png"
    _save_png(fig, out_dir / name, dpi=90)
    plt.close(fig)
    return name, (f"{case['title']}: truth, every method, error maps"
                  + (" and the SRep trust map" if trust_cols else ""))


def _bars(plt, case_names: list, series: dict, ylabel: str, path: Path, zero_line: bool = False) -> None:
    """Grouped bars: one group per case, one bar per method."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(case_names) + 2), 3.6))
    width = 0.8 / max(len(series), 1)
    for n, (m, vals) in enumerate(series.items()):
        ax.bar(np.arange(len(case_names)) + (n - (len(series) - 1) / 2) * width, vals, width, label=m,
               color=_colour(m))
    if zero_line:
        ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(case_names)))
    ax.set_xticklabels(case_names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)


def _nrmse_figure(plt, results: dict, out_dir: Path) -> dict:
    nrmse = aggregate(results["records"], "nrmse")
    if not nrmse:
        return {}
    case_names = [c["name"] for c in results["cases"]]
    series = {m["name"]: [nrmse.get((c, m["name"]), (np.nan,))[0] for c in case_names] for m in results["methods"]}
    _bars(plt, case_names, series, "NRMSE in brain", out_dir / "summary_nrmse.png")
    return {"summary_nrmse": ("summary_nrmse.png", "NRMSE per case and method")}


def _gain_figure(plt, results: dict, out_dir: Path) -> dict:
    methods = [m["name"] for m in results["methods"]]
    others = [m for m in methods if m in ("srep", "ddl", "dl", "forest")]
    if BASELINE not in methods or not others:
        return {}
    nrmse = aggregate(results["records"], "nrmse")
    case_names = [c["name"] for c in results["cases"]]
    series = {m: [np.nan if (v := gain(nrmse, c, m, BASELINE)) is None else v for c in case_names] for m in others}
    _bars(plt, case_names, series, "% lower NRMSE than linear", out_dir / "gain_over_linear.png", zero_line=True)
    return {"gain_over_linear": ("gain_over_linear.png", "Gain over linear regression per case")}


def _lesion_figure(plt, results: dict, out_dir: Path) -> dict:
    rows = results["lesions"]
    if not rows:
        return {}
    methods = [m["name"] for m in results["methods"]]
    factors = sorted({r["factor"] for r in rows})
    fig, axes = plt.subplots(1, len(factors), figsize=(4.2 * len(factors), 3.3), squeeze=False)
    for ax, f in zip(axes[0], factors):
        for m in methods:
            by_r = {}
            for r in rows:
                if r["method"] == m and r["factor"] == f and math.isfinite(r["kept"]):
                    by_r.setdefault(r["radius_mm"], []).append(r["kept"])
            if by_r:
                radii = sorted(by_r)
                ax.plot(radii, [np.mean(by_r[r]) for r in radii], marker="o", label=m, color=_colour(m))
        ax.axhline(100, color="k", lw=0.8, ls="--")
        ax.set_xlabel("lesion radius (mm)")
        ax.set_ylabel("contrast kept (%)")
        ax.set_title(("hypo" if f < 1 else "hyper") + f"-intense lesions (×{f:g} WM)", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    _save_png(fig, out_dir / "lesion_contrast.png")
    plt.close(fig)
    return {"lesion_contrast": ("lesion_contrast.png", "Lesion contrast kept vs lesion size")}
