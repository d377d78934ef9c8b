"""Training pairs: HQ volumes and LQ volumes simulated from them, in the canonical frame.

Every learned method trains on the same pairs: for each HQ volume and each chosen thick axis,
the LQ is simulated (:mod:`.simulate`) with parameters drawn from ranges (stochastic mode, the
default) or fixed, both arrays are divided by the LQ's intensity scale (:mod:`.normalize`) and the
thick axis is moved first.  Training along all three axes of isotropic templates teaches a model
axial, coronal and sagittal thick-slice acquisitions alike.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Union

import numpy as np

from .errors import InputError
from .grid import check_factor
from .normalize import intensity_scale, to_canonical
from .simulate import ParameterRanges, SimulationParameters, degrade_array, foreground_mask, sample_parameters
from .volume import Volume, array_axis


@dataclasses.dataclass
class Realization:
    lq: np.ndarray        # [M, a, b] float32, normalised
    hq: np.ndarray        # [M*f, a, b] float32, same scale
    lq_mask: np.ndarray   # [M, a, b] bool
    hq_mask: np.ndarray   # [M*f, a, b] bool
    params: dict          # simulation parameters used


class TrainingPairs:
    def __init__(self, hq_volumes: list, masks: Optional[list], factor: int, seed: int,
                 simulation: Union[SimulationParameters, ParameterRanges, None], axes=("i", "j", "k")):
        if not hq_volumes:
            raise InputError("training needs at least one HQ volume")
        self.factor = check_factor(factor)
        self.seed = int(seed)
        self.simulation = simulation if simulation is not None else ParameterRanges()
        self.axes = tuple(axes)
        self.hq = []
        self.masks = []
        for n, volume in enumerate(hq_volumes):
            if not isinstance(volume, Volume):
                raise InputError(f"training volume {n} is not a Volume")
            array = np.asarray(volume.array, dtype=np.float32)
            mask = (masks[n].array > 0) if masks is not None and masks[n] is not None else foreground_mask(array)
            if mask.shape != array.shape:
                raise InputError(f"training mask {n} has shape {mask.shape}, the volume {array.shape}")
            self.hq.append(array)
            self.masks.append(mask)
        self._fixed = None
        self._memberships_of = {}        # volume index -> tissue memberships (low-field draws)

    def subset(self, indices) -> "TrainingPairs":
        """The same pairs restricted to some volumes (e.g. all but one held out)."""
        out = TrainingPairs.__new__(TrainingPairs)
        out.factor, out.seed, out.simulation, out.axes = self.factor, self.seed, self.simulation, self.axes
        out.hq = [self.hq[i] for i in indices]
        out.masks = [self.masks[i] for i in indices]
        out._fixed = None
        out._memberships_of = {}
        return out

    @property
    def simulation_record(self) -> dict:
        if isinstance(self.simulation, ParameterRanges):
            record = {"mode": "stochastic", **dataclasses.asdict(self.simulation), "axes": list(self.axes)}
            if self.simulation.lowfield_share > 0 and self.simulation.lowfield is None:
                from .lowfield import LowFieldRanges

                record["lowfield"] = dataclasses.asdict(LowFieldRanges())
            return record
        return {"mode": "fixed", **self.simulation.to_dict(), "axes": list(self.axes)}

    def realize(self, volume_index: int, axis: str, rng: np.random.Generator) -> Realization:
        """Simulate one LQ version of HQ volume ``volume_index`` with thick ``axis``."""
        f = self.factor
        lowfield_record = None
        if isinstance(self.simulation, ParameterRanges) and self.simulation.lowfield_share > 0 and \
                rng.uniform() < self.simulation.lowfield_share:
            params, lowfield_record = self._lowfield_parameters(volume_index, axis, rng)
        elif isinstance(self.simulation, ParameterRanges):
            params = sample_parameters(f, axis, rng, self.simulation)
        else:
            params = dataclasses.replace(self.simulation, factor=f, axis=axis,
                                         seed=int(rng.integers(0, 2**31 - 1))).validate()
        hq = self.hq[volume_index]
        mask = self.masks[volume_index]
        ax = array_axis(axis)
        whole = hq.shape[ax] // f * f
        index = [slice(None)] * 3
        index[ax] = slice(0, whole)
        hq = hq[tuple(index)]
        mask = mask[tuple(index)]
        lq = degrade_array(hq, params, mask, rng=np.random.default_rng(params.seed))
        # the simulator's contrast change is part of the LQ, not the target: the HQ stays as acquired
        scale = intensity_scale(lq)
        lq_c = np.ascontiguousarray(to_canonical(lq, ax)) / np.float32(scale)
        hq_c = np.ascontiguousarray(to_canonical(hq, ax)) / np.float32(scale)
        hq_mask = np.ascontiguousarray(to_canonical(mask, ax))
        lq_mask = hq_mask.reshape(hq_mask.shape[0] // f, f, *hq_mask.shape[1:]).mean(axis=1) > 0.5
        record = params.to_dict()
        if lowfield_record is not None:
            record["lowfield"] = lowfield_record
        return Realization(lq_c.astype(np.float32), hq_c.astype(np.float32), lq_mask, hq_mask, record)

    def _lowfield_parameters(self, volume_index: int, axis: str, rng: np.random.Generator) -> tuple:
        """A low-field draw (:mod:`.lowfield`) for one realization: contrast and SNR from the ranges'
        low-field model, thickness from its thickness range; tissue memberships computed once per volume."""
        from .lowfield import LowFieldRanges, lowfield_parameters

        r = self.simulation
        contrast = (r.lowfield or LowFieldRanges()).draw(rng)
        thickness = float(self.factor * rng.uniform(*r.thickness_scale))
        seed = int(rng.integers(0, 2**31 - 1))
        params, record = lowfield_parameters(self.hq[volume_index], self.masks[volume_index], contrast, self.factor,
                                             axis, seed=seed, thickness=thickness,
                                             memberships=self._memberships(volume_index))
        keep = ("gm_wm", "csf_gm", "snr_wm", "wm_gm_ratio_hq", "wm_gm_ratio_lq")
        return params, {k: record[k] for k in keep}

    def _memberships(self, volume_index: int):
        from .simulate import tissue_memberships

        if volume_index not in self._memberships_of:
            self._memberships_of[volume_index] = tissue_memberships(self.hq[volume_index], self.masks[volume_index])
        return self._memberships_of[volume_index]

    def fixed(self, per_volume_axis: int = 1) -> list:
        """A deterministic list of realizations (``per_volume_axis`` per volume and axis), cached."""
        if self._fixed is None or len(self._fixed) != per_volume_axis * len(self.hq) * len(self.axes):
            rng = np.random.default_rng(self.seed)
            self._fixed = [self.realize(v, axis, rng) for v in range(len(self.hq)) for axis in self.axes
                           for _ in range(per_volume_axis)]
        return self._fixed

    def random(self, rng: np.random.Generator) -> Realization:
        """A fresh realization of a random volume and axis (for networks: new noise every time)."""
        return self.realize(int(rng.integers(len(self.hq))), self.axes[int(rng.integers(len(self.axes)))], rng)


def make_training_pairs(hq_volumes: list, masks: Optional[list] = None, *, factor: int = 4, seed: int = 0,
                        simulation=None, axes=("i", "j", "k"), reporter=None) -> TrainingPairs:
    pairs = TrainingPairs(hq_volumes, masks, factor, seed, simulation, axes)
    if reporter is not None:
        reporter(1.0, "training pairs ready", force=True)
    return pairs
