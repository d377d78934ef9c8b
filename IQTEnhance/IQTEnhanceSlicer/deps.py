"""Python packages the engine needs inside Slicer: checked on first use, installed only after the
user confirms, and never at the cost of the packages Slicer itself ships.

* numpy, SimpleITK and vtk come with Slicer and are **never** installed or upgraded by us: other
  modules and Slicer's own C++ wrappers are built against them.  If one is missing, Slicer is broken
  and we say so.  Every pip call gets a constraints file pinning the installed versions of these
  (and of scipy, when Slicer ships it), so a dependency cannot drag in another numpy either.
* torch (only for the methods that need it): where the PyTorch extension is installed, the way its
  ``PyTorchUtils`` does it, by ``light-the-torch`` (which picks the wheel matching the GPU driver), else
  ``pip install torch``.  From the panel both run in a child process (:class:`InstallJob`), never on
  the GUI thread.
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


def install_message(missing: list, light_the_torch: bool = False) -> str:
    names = ", ".join(m.requirement for m in missing)
    if light_the_torch and any(m.module == "torch" for m in missing):
        names += " (PyTorch by light-the-torch, as the PyTorch extension does: the build for your GPU driver)"
    size = " PyTorch is a large download (about 200 MB for the CPU build, 2 GB or more with CUDA)." \
        if any(m.module == "torch" for m in missing) else ""
    return (f"IQTEnhance needs these Python packages, which are not installed: {names}.{size} "
            "Install them now? (Needs a network connection; numpy, SimpleITK and vtk are left as they are.)")


def confirm_install(missing: list, confirm: Callable[[str, str], bool], light_the_torch: bool = False) -> None:
    """Refuse to reinstall Slicer's own packages; ask the user; a decline raises and changes nothing."""
    broken = [m.module for m in missing if m.shipped_with_slicer]
    if broken:
        raise DependencyError(
            f"{', '.join(broken)} should come with Slicer but cannot be imported; IQTEnhance does not "
            "reinstall Slicer's own packages: reinstall Slicer")
    if not confirm("Install Python packages", install_message(missing, light_the_torch)):
        raise DependencyError("not installed: " + ", ".join(m.requirement for m in missing)
                              + " (the installation was declined)")


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
    confirm_install(missing, confirm)
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
    """Install with Slicer's own tools, pinning the protected packages: ``slicer.pydeps.pip_ensure``
    where Slicer has it (5.11 and later: it checks first, installs only what is missing, and records
    who asked), else ``slicer.util.pip_install`` with a ``constraints`` argument, else (older
    versions) pip's own ``-c`` in a list of arguments, so a temporary path with spaces survives."""
    try:
        import slicer.pydeps as pydeps
    except ImportError:
        pydeps = None
    if pydeps is not None and hasattr(pydeps, "pip_ensure"):
        from packaging.requirements import Requirement

        pydeps.pip_ensure([Requirement(requirements)], constraints=constraints_path, requester="IQTEnhance")
        return
    import slicer.util

    try:
        slicer.util.pip_install(requirements, constraints=constraints_path)
    except TypeError:
        slicer.util.pip_install([requirements, "-c", constraints_path])


LIGHT_THE_TORCH = "light-the-torch>=0.5"   # the version the PyTorch extension installs


class InstallJob:
    """``pip install`` in a child process, so that a multi-GB download never freezes Slicer's GUI:
    its output goes to a file that :meth:`poll` reads without blocking (the last line is the
    progress message), :meth:`cancel` ends it at once, and the constraints file pinning Slicer's own
    packages is kept for the whole install.  ``extra_args`` (e.g. ``--target DIR`` in tests) go to pip.

    ``light_the_torch``: install torch as the PyTorch extension does, by ``light-the-torch`` (installed
    first if missing), which picks the build for the GPU driver; the other packages go through pip.
    The steps run one after the other in child processes; the first failure ends the job."""

    def __init__(self, requirements, constraints_path: Optional[str] = None, python: Optional[str] = None,
                 extra_args=(), env: Optional[dict] = None, light_the_torch: bool = False):
        from .worker import worker_python

        self.requirements = [requirements] if isinstance(requirements, str) else list(requirements)
        self.constraints_path = constraints_path
        self.python = python or worker_python()
        self.extra_args = list(extra_args)
        self.env = env
        self.light_the_torch = light_the_torch
        self.process = None
        self.log_path = None
        self.returncode: Optional[int] = None
        self.cancelled = False
        self._offset = 0
        self._pending: list = []
        self.last_line = ""

    def _options(self) -> list:
        return (["-c", self.constraints_path] if self.constraints_path else []) + self.extra_args

    def commands(self) -> list:
        """The command lines, in order."""
        pip = [self.python, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
        by_light_the_torch = [r for r in self.requirements if self.light_the_torch and _names_torch(r)]
        others = [r for r in self.requirements if r not in by_light_the_torch]
        commands = [pip + self._options() + others] if others else []
        if by_light_the_torch:
            if not module_available("light_the_torch"):
                commands.append(pip + self._options() + [LIGHT_THE_TORCH])
            commands.append([self.python, "-m", "light_the_torch", "install"] + self._options() + by_light_the_torch)
        return commands

    def start(self) -> "InstallJob":
        fd, self.log_path = tempfile.mkstemp(prefix="iqtenhance-pip-", suffix=".log")
        os.close(fd)
        self._pending = self.commands()
        self._next()
        return self

    def _next(self) -> None:
        import subprocess

        command = self._pending.pop(0)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=self.env)

    def poll(self) -> Optional[str]:
        """The newest complete output line since the last call (None if none); never blocks."""
        line = None
        if self.log_path and os.path.exists(self.log_path):
            with open(self.log_path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
            end = data.rfind(b"\n")
            if end >= 0:
                self._offset += end + 1
                lines = [t.strip() for t in data[:end].decode("utf-8", "replace").splitlines() if t.strip()]
                if lines:
                    line = self.last_line = lines[-1]
        if self.process is not None and self.returncode is None and not self.cancelled:
            code = self.process.poll()
            if code == 0 and self._pending:
                self._next()          # the next step (light-the-torch after its own install)
            else:
                self.returncode = code
        return line

    @property
    def finished(self) -> bool:
        self.poll()
        return self.returncode is not None or self.cancelled

    @property
    def succeeded(self) -> bool:
        return self.finished and self.returncode == 0 and not self.cancelled

    def output(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-20000:]
        except (OSError, TypeError):
            return ""

    def error_message(self) -> str:
        if self.cancelled:
            return "the installation was cancelled"
        if self.returncode in (None, 0):
            return ""
        return f"pip could not install {', '.join(self.requirements)} (exit code {self.returncode}): {self.last_line}"

    def cancel(self) -> None:
        self.cancelled = True
        self._pending = []
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.returncode = self.process.returncode if self.process is not None else None

    def close(self) -> None:
        """Remove the log file (after the caller has shown or saved what it needs)."""
        if self.log_path:
            try:
                os.unlink(self.log_path)
            except OSError:
                pass
            self.log_path = None


def _names_torch(requirement: str) -> bool:
    name = requirement.split(";")[0].strip()
    for mark in "<>=!~[ ":
        name = name.split(mark)[0]
    return name.lower() == "torch"


def start_install(missing: list, confirm: Callable[[str, str], bool], python: Optional[str] = None,
                  extra_args=(), light_the_torch: Optional[bool] = None) -> Optional[InstallJob]:
    """After the user confirms, start installing ``missing`` (from :func:`missing_packages`) in a
    child process; returns the job, or None when nothing is missing.  Declined: raises
    :class:`DependencyError` and changes nothing.  The constraints file lives until
    :func:`finish_install`.  ``light_the_torch`` (default: where the PyTorch extension is installed):
    torch by light-the-torch, as that extension does."""
    if not missing:
        return None
    if light_the_torch is None:
        light_the_torch = module_available("PyTorchUtils")
    confirm_install(missing, confirm, light_the_torch)
    return InstallJob([m.requirement for m in missing], write_constraints(), python=python,
                      extra_args=extra_args, light_the_torch=light_the_torch).start()


def finish_install(job: InstallJob, modules=()) -> None:
    """Clean up after an :class:`InstallJob`; raise :class:`DependencyError` when it failed, was
    cancelled, or did not make ``modules`` importable."""
    try:
        if not job.succeeded:
            raise DependencyError(job.error_message() or "the installation did not finish")
        importlib.invalidate_caches()
        missing = [m for m in modules if not module_available(m)]
        if missing:
            raise DependencyError(f"{', '.join(missing)} installed but cannot be imported; restart Slicer")
    finally:
        if job.constraints_path:
            try:
                os.unlink(job.constraints_path)
            except OSError:
                pass
        job.close()
