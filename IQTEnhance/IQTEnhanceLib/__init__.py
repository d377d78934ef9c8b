"""IQTEnhance engine: Image Quality Transfer for low-quality MRI, without Slicer.

Imports only numpy, scipy, SimpleITK and (for the learned methods) torch and scikit-learn;
never slicer, qt, ctk or vtk.  Array order is [k, j, i] everywhere: see :mod:`.volume`.
"""
__version__ = "0.1.0"

from .errors import CancelledError, InputError, IQTError, ModelError  # noqa: F401
from .volume import Volume, read_volume, write_volume  # noqa: F401
