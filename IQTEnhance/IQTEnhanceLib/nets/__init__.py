"""The networks of IQT-DL and IQT-DDL (torch only; imported lazily by :mod:`..methods.networks`).

* :mod:`.architectures`: anisotropic 3-D U-Net (IQT-DL), 3-D UNet++ + learned HQ dictionary (IQT-DDL);
* :mod:`.inference`: memory-bounded sliding-window inference with Gaussian blending;
* :mod:`.training`: on-the-fly stochastic simulation, augmentation, validation, checkpoints;
* :mod:`.serialization`: network <-> :class:`~..models.ModelFile`;
* :mod:`.shipping`: the recipe that trains and evaluates the shipped models.
"""
