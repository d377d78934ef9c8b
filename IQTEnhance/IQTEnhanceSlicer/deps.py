"""Python packages the engine needs inside Slicer: checked on first use, installed only after the
user confirms, and never at the cost of the packages Slicer itself ships.

* numpy, SimpleITK and vtk come with Slicer and are **never** installed or upgraded by us: other
  modules and Slicer's own C++ wrappers are built against them.  If one is missing, Slicer is broken
  and we say so.  Every pip call gets a constraints file pinning the installed versions of these
  (and of scipy, when Slicer ships it), so a dependency cannot drag in another numpy either.
* torch (only for the methods that need it): through the PyTorch extension's ``PyTorchUtils``
  when it is installed (it picks the wheel matching the GPU driver), else ``pip install torch``.
* scipy (Slicer ships it; older or custom builds may not): pip, if missing.

No Qt here: the caller passes ``confirm(title, message) -> bool`` and ``pip_install(requirements,
constraints_path)`` (in Slicer: ``slicer.util.confirmOkCancelDisplay`` and ``slicer.util.pip_install``),
so the decisions are tested headless.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import os
import tempfile
from typing import Callable, Optional

from IQTEnhanceLib.errors import IQTError

# import name -> distribution name
SLICER_SHIPPED = {"numpy": "numpy", "SimpleITK": "SimpleITK", "vtk": "vtk"}
# Besides Slicer's own packages the engine needs scipy, and torch for the methods that say so (needs_torch)
ENGINE_PACKAGES = {"scipy": "scipy"}
TORCH_REQUIREMENT = "torch>=2.1"          # the engine works with any torch >= 2.1


class DependencyError(IQTError):
    """A package is missing and was not (or could not be) installed."""


@dataclasses.dataclass
class Missing:
    module: str
    requirement: str
    shipped_with_slicer: bool


def module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def installed_version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_packages(needs_torch: bool = False) -> list:
    """What the engine lacks for a run (torch only when ``needs_torch``)."""
    missing = [Missing(m, d, True) for m, d in SLICER_SHIPPED.items() if not module_available(m)]
    missing += [Missing(m, d, False) for m, d in ENGINE_PACKAGES.items() if not module_available(m)]
    if needs_torch and not module_available("torch"):
        missing.append(Missing("torch", TORCH_REQUIREMENT, False))
    return missing


def protected_constraints() -> list:
    """``name==version`` for every installed package we must not change."""
    pins = []
    for distribution in list(SLICER_SHIPPED.values()) + ["scipy"]:
        version = installed_version(distribution)
        if version:
            pins.append(f"{distribution}=={version}")
    return pins


def write_constraints(directory: Optional[str] = None) -> str:
    fd, path = tempfile.mkstemp(prefix="iqtenhance-constraints-", suffix=".txt", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(protected_constraints()) + "\n")
    return path


def install_message(missing: list) -> str:
    names = ", ".join(m.requirement for m in missing)
    size = " PyTorch is a large download (about 200 MB for the CPU build, 2 GB or more with CUDA)." \
        if any(m.module == "torch" for m in missing) else ""
    return (f"IQTEnhance needs these Python packages, which are not installed: {names}.{size} "
            "Install them now? (Needs a network connection; numpy, SimpleITK and vtk are left as they are.)")


def ensure_packages(needs_torch: bool, confirm: Callable[[str, str], bool],
                    pip_install: Callable[[str, str], None], pytorch_utils=None) -> list:
    """Make the engine's packages importable; returns the requirements that were installed.

    ``pytorch_utils``: the ``PyTorchUtils`` module of the PyTorch extension, or None.  Raises
    :class:`DependencyError` when a Slicer-shipped package is missing, the user declines, or the
    install does not make the package importable.
    """
    missing = missing_packages(needs_torch)
    if not missing:
        return []
    broken = [m.module for m in missing if m.shipped_with_slicer]
    if broken:
        raise DependencyError(
            f"{', '.join(broken)} should come with Slicer but cannot be imported; IQTEnhance does not "
            "reinstall Slicer's own packages: reinstall Slicer")
    if not confirm("Install Python packages", install_message(missing)):
        raise DependencyError("not installed: " + ", ".join(m.requirement for m in missing)
                              + " (the installation was declined)")
    installed = []
    constraints = write_constraints()
    try:
        for m in missing:
            if m.module == "torch" and pytorch_utils is not None:
                torch = pytorch_utils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                                        torchVersionRequirement=">=2.1")
                if torch is None:
                    raise DependencyError("the PyTorch extension did not install PyTorch")
            else:
                pip_install(m.requirement, constraints)
            importlib.invalidate_caches()
            if not module_available(m.module):
                raise DependencyError(f"{m.requirement} was installed but cannot be imported; restart Slicer")
            installed.append(m.requirement)
    finally:
        os.unlink(constraints)
    return installed


def slicer_pip_install(requirements: str, constraints_path: str) -> None:
    """Install with Slicer's pip, pinning the protected packages.  Slicer >= 5.11 takes a
    ``constraints`` argument; older versions pass a list of arguments to pip as they are (a list,
    not a string, so a temporary path with spaces survives)."""
    import slicer.util

    try:
        slicer.util.pip_install(requirements, constraints=constraints_path)
    except TypeError:
        slicer.util.pip_install([requirements, "-c", constraints_path])
