"""Networks <-> model files (:class:`..models.ModelFile`) and training checkpoints.

A model file keeps the architecture in ``params`` (method, architecture, factor, base_filters,
levels, atoms, atom_size, lq_aspect, ...) and the torch ``state_dict`` as the blob ``weights.pt``
(read back with ``torch.load(weights_only=True)``: no code in a model file is ever executed).  IQT-DDL
also stores its dictionary in ``arrays["dictionary"]`` so that it can be shown without torch.
Anything that does not fit (corrupt bytes, missing or extra tensors, shapes of another
architecture) raises :class:`..errors.ModelError` with one sentence.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..files import atomic_path
from ..models import ModelFile
from .architectures import ARCHITECTURES, build_network, contiguous_state, count_parameters, use_channels_last

WEIGHTS_MEMBER = "weights.pt"


def architecture_params(method: str, factor: int, base_filters: int, levels: int, atoms: int = 64,
                        atom_size: int = 1, tail_width: int = 0, generator: bool = False,
                        compensation: bool = False, logit_scale: float = 1.0, gain: str = "none") -> dict:
    params = {"architecture": ARCHITECTURES[method], "factor": int(factor), "base_filters": int(base_filters),
              "levels": int(levels)}
    if method == "ddl":
        params.update(atoms=int(atoms), atom_size=int(atom_size), tail_width=int(tail_width or base_filters),
                      generator=bool(generator), compensation=bool(compensation), logit_scale=float(logit_scale))
        if gain != "none":   # files without it are SRDD's plain softmax
            params["gain"] = str(gain)
    return params


def network_from_params(method: str, params: dict, where: str = "model"):
    try:
        if params.get("architecture") != ARCHITECTURES[method]:
            raise ModelError(f"{where}: architecture {params.get('architecture')!r} is not the "
                             f"{method} network ({ARCHITECTURES[method]})")
        # files written before tail_width (or the SRDD variants) were parameters: a tail as wide as the
        # base, free atoms, no compensation branch, logits unscaled, no gain
        return build_network(method, int(params["factor"]), int(params["base_filters"]), int(params["levels"]),
                             int(params.get("atoms", 64)), int(params.get("atom_size", 1)),
                             int(params.get("tail_width", params["base_filters"])),
                             bool(params.get("generator", False)), bool(params.get("compensation", False)),
                             float(params.get("logit_scale", 1.0)), str(params.get("gain", "none")))
    except ModelError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{where}: architecture parameters are incomplete or invalid ({exc})") from None


def state_dict_bytes(net) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(contiguous_state(net), buf)
    return buf.getvalue()


def load_state(net, state, where: str) -> None:
    """``load_state_dict`` with one clear sentence for a state of another architecture."""
    if not isinstance(state, dict):
        raise ModelError(f"{where}: the weights are not a state dict")
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ModelError(f"{where}: the weights do not fit the architecture ({len(missing)} tensor(s) missing, "
                         f"{len(extra)} unexpected, e.g. {(missing + extra)[0]})")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ModelError(f"{where}: tensor {key} has shape {tuple(state[key].shape)}, the architecture "
                             f"needs {tuple(value.shape)}")
    net.load_state_dict(state)


def _torch_load(data, where: str):
    import torch

    try:
        return torch.load(data if isinstance(data, (str, os.PathLike)) else io.BytesIO(data),
                          map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad bytes
        raise ModelError(f"{where}: the weights are corrupt or not a torch state dict ({type(exc).__name__})") from None


def network_from_model(model: ModelFile, device: str = "cpu"):
    """Build the network of a :class:`ModelFile` and load its weights (on ``device``, eval mode)."""
    where = model.path.name if model.path else model.name
    if WEIGHTS_MEMBER not in model.blobs:
        raise ModelError(f"{where}: the model file has no network weights ({WEIGHTS_MEMBER})")
    if int(model.params.get("factor", model.factor)) != int(model.factor):
        raise ModelError(f"{where}: the network's factor {model.params.get('factor')} differs from the model's "
                         f"×{model.factor}")
    net = network_from_params(model.method, model.params, where)
    load_state(net, _torch_load(model.blobs[WEIGHTS_MEMBER], where), where)
    return use_channels_last(net.to(device), device).eval()


def model_from_network(method: str, net, name: str, params: dict, training: dict) -> ModelFile:
    arrays = {}
    if method == "ddl":
        arrays["dictionary"] = dictionary_atoms(net)
    params = dict(params, parameters=count_parameters(net))
    return ModelFile(method=method, name=name, factor=int(net.factor), params=params, arrays=arrays,
                     blobs={WEIGHTS_MEMBER: state_dict_bytes(net)}, training=training)


def dictionary_atoms(model) -> np.ndarray:
    """The learned HQ dictionary of an IQT-DDL network or model file as a float32 array
    (K atoms × f HQ sub-slices × n × n in-plane): atom k is the HQ block (residual over the linear
    up-sampling) that one LQ voxel contributes with coefficient 1."""
    if isinstance(model, ModelFile):
        if model.method != "ddl":
            raise ModelError(f"{model.name} is a {model.method} model; only ddl models have a dictionary")
        if "dictionary" in model.arrays:
            return np.asarray(model.arrays["dictionary"], dtype=np.float32)
        model = network_from_model(model)
    if not hasattr(model, "atoms_tensor"):
        raise ModelError("this network has no dictionary (only IQT-DDL has one)")
    import torch

    with torch.no_grad():
        return model.atoms_tensor().detach().cpu().numpy().astype(np.float32)


# -- training checkpoints -----------------------------------------------------------------------
CHECKPOINT_FORMAT = "iqtenhance-checkpoint"


def save_checkpoint(path, payload: dict) -> Path:
    """Atomic write (temporary name, then rename), so an interrupted save never leaves half a file."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(dict(payload, format=CHECKPOINT_FORMAT), tmp)
    return path


def load_checkpoint(path, method: str, arch: dict) -> dict:
    """Read a checkpoint and check that it belongs to ``method`` with architecture ``arch``."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such checkpoint")
    payload = _torch_load(path, path.name)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path.name}: not an IQTEnhance training checkpoint")
    if payload.get("method") != method:
        raise ModelError(f"{path.name}: a {payload.get('method')} checkpoint cannot resume {method} training")
    saved = payload.get("arch", {})
    diff = [k for k in set(saved) | set(arch) if saved.get(k) != arch.get(k)]
    if diff:
        k = sorted(diff)[0]
        raise ModelError(f"{path.name}: the checkpoint's {k} is {saved.get(k)!r} but this training uses "
                         f"{arch.get(k)!r}; use the same settings or another checkpoint directory")
    return payload
