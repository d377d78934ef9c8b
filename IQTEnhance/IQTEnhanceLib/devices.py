"""Device choice: "auto" takes CUDA when torch sees a GPU, else the CPU."""
from __future__ import annotations

from .errors import InputError

DEVICES = ("auto", "cpu", "cuda")


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def cuda_available() -> bool:
    if not torch_available():
        return False
    import torch

    return bool(torch.cuda.is_available())


def cuda_unavailable_reason() -> str:
    """Why the GPU cannot be used (empty when it can): shown as the panel's tooltip."""
    if not torch_available():
        return "PyTorch is not installed"
    import torch

    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) is a CPU-only build"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch"
    return ""


def check_device_name(device: str | None) -> str:
    """The device name normalised (auto, cpu or cuda) without probing the GPU (no torch import)."""
    d = (device or "auto").lower()
    if d == "gpu" or d.startswith("cuda:"):
        d = "cuda"
    if d not in DEVICES:
        raise InputError(f"device must be one of auto, cpu, cuda (got {device!r})")
    return d


def resolve_device(device: str | None) -> str:
    """'auto' → 'cuda' when available else 'cpu'; 'gpu' is an alias of 'cuda' (the name checked by
    :func:`check_device_name`, then the GPU probed)."""
    d = check_device_name(device)
    if d == "auto":
        return "cuda" if cuda_available() else "cpu"
    if d == "cuda" and not cuda_available():
        raise InputError(f"device cuda was asked for but {cuda_unavailable_reason()}")
    return d
