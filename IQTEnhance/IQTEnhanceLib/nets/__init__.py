"""The networks of IQT-DL and IQT-DDL (torch only; imported lazily by :mod:`..methods.networks`).

* :mod:`.architectures`: anisotropic 3-D U-Net (IQT-DL), 3-D UNet++ + learned HQ dictionary (IQT-DDL);
* :mod:`.inference`: memory-bounded sliding-window inference with Gaussian blending;
* :mod:`.training_data`: on-the-fly stochastic simulation, augmentation, held-out validation cubes;
* :mod:`.training`: the :class:`~.training.Trainer` (steps, validation, checkpoints, convergence);
* :mod:`.heldout`: after training, the check against linear interpolation on held-out data;
* :mod:`.serialization`: network <-> :class:`~..models.ModelFile`.

The recipes of the shipped models live outside the engine, in ``Tools/``.
"""
