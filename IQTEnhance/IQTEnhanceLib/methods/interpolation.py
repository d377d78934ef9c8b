"""The interpolation baselines as methods (no model, no training)."""
from __future__ import annotations

from ..interpolation import upsample_array
from . import MethodSpec


def _make(order_name: str, label: str, description: str, memory: tuple) -> MethodSpec:
    def enhance(lq, factor, model, device, reporter, **options):
        reporter(0.0, f"{label} interpolation", force=True)
        out = upsample_array(lq, factor, 0, order_name)
        reporter(1.0, "done", force=True)
        return out, {}

    return MethodSpec(name=order_name, label=label, description=description, enhance=enhance, memory=memory)


SPECS = {
    "nearest": _make("nearest", "Nearest neighbour", "repeats each thick slice (shows the input as acquired)",
                     (16, 0)),
    "trilinear": _make("trilinear", "Trilinear", "linear interpolation between slice centres", (20, 0)),
    "bspline": _make("bspline", "Cubic B-spline", "cubic B-spline interpolation between slice centres",
                     (22, 0)),
}
