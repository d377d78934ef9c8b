"""What the panel shows, from the registries (methods, options, models, devices, states), and the
dependency decisions (confirm, never touch Slicer's packages) — all headless."""
import importlib.metadata
from pathlib import Path

import pytest

from IQTEnhanceLib.devices import cuda_available, cuda_unavailable_reason
from IQTEnhanceLib.methods import MethodOption, available_methods, get_method
from IQTEnhanceLib.models import shipped_models
from IQTEnhanceSlicer import deps, panel
from IQTEnhanceSlicer.runner import ProgressUpdate


def test_every_available_method_is_listed_learned_first():
    entries = panel.method_entries()
    assert sorted(e.name for e in entries) == sorted(available_methods())
    names = [e.name for e in entries]
    interp = [n for n in names if n in panel.INTERPOLATION_METHODS]
    assert names[-len(interp):] == interp
    for e in entries:
        spec = get_method(e.name)
        assert e.label == spec.label
        assert e.ready == (not spec.needs_model or bool(shipped_models(e.name))) or e.needs_torch
        assert e.ready or e.reason
    assert panel.default_method() in names


@pytest.mark.parametrize("method", available_methods())
def test_option_fields_of_every_method_are_valid_parameter_pack_fields(method):
    for f in panel.option_fields(method):
        assert f.field.isidentifier()
        assert f.type in (int, float, str, bool)
        if f.minimum is not None:
            assert f.minimum <= f.default <= f.maximum
        if f.choices:
            assert f.default in f.choices
    defaults = {f.field: f.default for f in panel.option_fields(method)}
    switches = panel.extra_switches(method)
    assert panel.options_from_fields(method, defaults) == {o.name: o.default for o in get_method(method).options
                                                           if o.name not in switches}
    for name in switches:  # e.g. SRep's trust_map: driven by "Also make trust map", not shown in the form
        assert get_method(method).options[[o.name for o in get_method(method).options].index(name)].type is bool


def test_option_field_ranges_and_names():
    lam = panel.option_field(MethodOption("lambda", float, 1e-4, "sparsity weight", minimum=0.0, min_exclusive=True))
    assert lam.field == "lambda_" and lam.label == "Lambda"
    assert 0.0 < lam.minimum <= 1e-5 and lam.maximum >= 1.0 and lam.decimals >= 5 and lam.step < 1e-4
    stride = panel.option_field(MethodOption("stride", int, 2, "patch stride", minimum=1))
    assert (stride.minimum, stride.step) == (1, 1) and stride.maximum >= 1000
    overlap = panel.option_field(MethodOption("overlap", float, 0.25, "tile overlap", minimum=0.0, maximum=1.0,
                                              max_exclusive=True))
    assert overlap.minimum == 0.0 and overlap.maximum < 1.0
    solver = panel.option_field(MethodOption("solver", str, "fista", "L1 solver", ("fista", "lars")))
    assert solver.choices == ("fista", "lars") and solver.minimum is None
    assert panel.field_name("batch-size") == "batch_size" and panel.field_name("2x") == "_2x"


@pytest.mark.parametrize("method", available_methods())
def test_widget_ranges_hold_only_values_the_engine_accepts(method):
    """One source of truth: every value a spin box can take passes the engine's check, and the
    values just outside are refused (no stride 0, no overlap of 1)."""
    from IQTEnhanceLib.errors import InputError

    spec = get_method(method)
    for field in panel.option_fields(method):
        option = next(o for o in spec.options if o.name == field.option)
        if field.minimum is None:
            continue
        for inside in (field.minimum, field.maximum, field.default):
            spec.validate_options({option.name: inside})
        for outside, bound in ((field.minimum - (field.step or 1), option.minimum),
                               (field.maximum + (field.step or 1), option.maximum)):
            if bound is not None:
                with pytest.raises(InputError, match=f"option {option.name} of {method} must be"):
                    spec.validate_options({option.name: outside})


def test_model_entries_list_shipped_models_then_loaded_then_load_item(tmp_path):
    from IQTEnhanceLib.selfsup import SELF_METHODS

    for method in available_methods():
        entries = panel.model_entries(method, extra_paths=[str(tmp_path / "mine.iqtm"), "self", "auto"])
        if not get_method(method).needs_model:
            assert entries == []
            continue
        shipped = shipped_models(method)
        learn = method in SELF_METHODS
        automatic = bool(shipped)
        assert len(entries) == automatic + len(shipped) + 2 + learn
        assert entries[-1].label == panel.LOAD_MODEL_ITEM and entries[-1].path == ""
        assert entries[-2].label == "mine.iqtm"
        if learn:   # "Learn from this scan" once, after the shipped models
            assert entries[-3].label == panel.LEARN_ITEM and entries[-3].path == "self"
        if automatic:   # "Automatic" first and the panel's default; then the method's default model
            assert entries[0].path == panel.AUTO_MODEL and entries[0].default
            assert [e.default for e in entries].count(True) == 1
            default = [m["file"] for m in shipped if m.get("default")]
            assert not default or Path(entries[1].path).name == default[0]
        for e in entries[automatic:automatic + len(shipped)]:
            assert Path(e.path).exists()


def test_gpu_item_is_disabled_with_the_reason_when_unavailable():
    devices = {d.name: d for d in panel.device_entries(probe=True)}
    assert list(devices) == ["auto", "cpu", "cuda"] and devices["cuda"].label == "GPU"
    assert devices["cpu"].enabled and devices["auto"].enabled
    assert devices["cuda"].enabled == cuda_available()
    if not cuda_available():
        assert cuda_unavailable_reason() in devices["cuda"].tooltip


def test_state_table_drives_apply_and_cancel():
    table = panel.STATE_TABLE
    assert set(table) == set(panel.ProcessingState)
    assert table[panel.ProcessingState.RUNNING].apply_text == "Cancel" and table[panel.ProcessingState.RUNNING].apply_enabled
    assert not table[panel.ProcessingState.CANCELLING].apply_enabled
    for state, view in table.items():
        assert view.inputs_enabled == (not view.busy)
        assert (view.apply_text == "Apply") == (state not in (panel.ProcessingState.RUNNING,
                                                               panel.ProcessingState.CANCELLING,
                                                               panel.ProcessingState.INSTALLING))
    update = ProgressUpdate(0.5, "IQT-SRep: enhanced 100/200 patches", 60.0, 60.0)
    text = panel.progress_text(panel.ProcessingState.RUNNING, update)
    assert "100/200" in text and "50%" in text and "1 min 00 s left" in text
    assert panel.progress_text(panel.ProcessingState.IDLE, update) == "Idle"


def test_input_problems_explain_why_apply_is_disabled():
    assert panel.input_problems(None, "trilinear", "", "auto") == ["Select an input volume."]
    assert panel.input_problems(object(), "trilinear", "", "cpu") == []
    assert "unknown method" in panel.input_problems(object(), "magic", "", "cpu")[0]
    if not cuda_available():
        assert any("GPU unavailable" in p for p in panel.input_problems(object(), "trilinear", "", "cuda"))


# -- dependencies -------------------------------------------------------------------------------
def test_nothing_is_installed_when_everything_is_there():
    asked = []
    assert deps.missing_packages(needs_torch=True) == []
    assert deps.ensure_packages(True, lambda *a: asked.append(a) or True, lambda *a: asked.append(a)) == []
    assert asked == []


def test_constraints_pin_the_packages_slicer_ships():
    pins = deps.protected_constraints()
    assert f"numpy=={importlib.metadata.version('numpy')}" in pins
    assert f"SimpleITK=={importlib.metadata.version('SimpleITK')}" in pins
    path = deps.write_constraints()
    try:
        assert Path(path).read_text().split() == pins
    finally:
        Path(path).unlink()


def test_missing_package_installs_only_after_confirmation(monkeypatch):
    monkeypatch.setitem(deps.ENGINE_PACKAGES, "iqtenhance_no_such_module", "iqtenhance-no-such-dist")
    installs = []

    def pip_install(requirement, constraints):
        installs.append((requirement, Path(constraints).read_text()))

    with pytest.raises(deps.DependencyError, match="declined"):
        deps.ensure_packages(False, lambda title, text: False, pip_install)
    assert installs == []

    messages = []
    with pytest.raises(deps.DependencyError, match="cannot be imported"):
        deps.ensure_packages(False, lambda title, text: messages.append(text) or True, pip_install)
    assert "iqtenhance-no-such-dist" in messages[0] and "numpy, SimpleITK and vtk are left as they are" in messages[0]
    (requirement, constraints), = installs
    assert requirement == "iqtenhance-no-such-dist"
    assert f"numpy=={importlib.metadata.version('numpy')}" in constraints


def test_torch_goes_through_pytorch_utils_when_present(monkeypatch):
    monkeypatch.setattr(deps, "module_available", lambda name: name != "torch" or calls["installed"])
    calls = {"installed": False, "pip": 0, "install_args": None}

    class Logic:
        def installTorch(self, **kwargs):
            calls["install_args"] = kwargs
            calls["installed"] = True
            return object()

    class PyTorchUtils:
        PyTorchUtilsLogic = Logic

    def pip_install(requirement, constraints):
        calls["pip"] += 1

    assert deps.ensure_packages(True, lambda t, m: True, pip_install, PyTorchUtils) == [deps.TORCH_REQUIREMENT]
    assert calls["pip"] == 0 and calls["install_args"]["askConfirmation"] is False
    assert deps.ensure_packages(False, lambda t, m: pytest.fail("asked"), pip_install) == []


def test_a_missing_slicer_package_is_reported_not_reinstalled(monkeypatch):
    monkeypatch.setitem(deps.SLICER_SHIPPED, "iqtenhance_no_such_vtk", "vtk")
    with pytest.raises(deps.DependencyError, match="reinstall Slicer"):
        deps.ensure_packages(False, lambda *a: pytest.fail("asked"), lambda *a: pytest.fail("installed"))


# -- installs in a child process (never on the GUI thread) -----------------------------------------
def _tiny_package(root: Path, name: str = "iqtenhance_tiny_pkg") -> Path:
    project = root / "tinypkg"
    (project / name).mkdir(parents=True)
    (project / name / "__init__.py").write_text("VALUE = 42\n")
    (project / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name.replace("_", "-")}"\nversion = "1.0"\n')
    return project


def test_install_runs_in_a_process_with_constraints_and_progress(tmp_path, monkeypatch):
    import time

    project = _tiny_package(tmp_path)
    target = tmp_path / "site"
    missing = [deps.Missing("iqtenhance_tiny_pkg", str(project), False)]
    asked = []
    job = deps.start_install(missing, lambda title, text: asked.append(text) or True,
                             extra_args=["--no-build-isolation", "--no-deps", "--no-index", "--target", str(target)])
    assert asked and "iqtenhance_tiny_pkg" not in asked[0] or asked
    constraints = Path(job.constraints_path)
    assert "numpy==" in constraints.read_text()           # Slicer's packages stay pinned during the install
    [command] = job.commands()
    assert "-c" in command and str(constraints) in command
    lines = []
    deadline = time.monotonic() + 120
    while not job.finished:
        line = job.poll()
        if line:
            lines.append(line)
        time.sleep(0.05)
        assert time.monotonic() < deadline
    monkeypatch.syspath_prepend(str(target))
    deps.finish_install(job, ["iqtenhance_tiny_pkg"])
    assert (target / "iqtenhance_tiny_pkg" / "__init__.py").exists()
    assert lines or job.last_line                          # pip's output reached the progress text
    assert not constraints.exists() and job.log_path is None   # cleaned up


def test_install_cancel_kills_pip_and_declining_changes_nothing(tmp_path):
    import time

    with pytest.raises(deps.DependencyError, match="declined"):
        deps.start_install([deps.Missing("torch", "torch>=2.1", False)], lambda *a: False)
    # an index that never answers: pip waits on the network until cancelled
    job = deps.start_install([deps.Missing("iqtenhance_never", "iqtenhance-never-exists", False)],
                             lambda *a: True, extra_args=["--index-url", "http://10.255.255.1/simple",
                                                          "--timeout", "60", "--target", str(tmp_path / "t")])
    time.sleep(1.0)
    started = time.perf_counter()
    job.cancel()
    assert time.perf_counter() - started < 5
    assert job.finished and not job.succeeded
    with pytest.raises(deps.DependencyError, match="cancelled"):
        deps.finish_install(job, ["iqtenhance_never"])
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").iterdir())


def test_remembered_choices_survive_only_when_still_valid():
    text = panel.settings_text("srep", "cpu", {"lam": 0.05, "stride_inplane": 1})
    assert panel.remembered_choices(text) == {"method": "srep", "device": "cpu",
                                              "options": {"lam": 0.05, "stride_inplane": 1}}
    # a value the engine now refuses, an option that no longer exists, an unknown method or device:
    # dropped, never an error when the panel opens
    stale = '{"method": "srep", "device": "tpu", "options": {"srep": {"stride_inplane": 0, "gone": 1, "lam": 0.1}}}'
    assert panel.remembered_choices(stale) == {"method": "srep", "options": {"lam": 0.1}}
    assert panel.remembered_choices('{"method": "magic"}') == {}
    for broken in ("", "not json", "[1, 2]", None):
        assert panel.remembered_choices(broken) == {}


def test_slicer_install_uses_pydeps_pip_ensure_where_slicer_has_it(monkeypatch, tmp_path):
    """Slicer >= 5.11: ``slicer.pydeps.pip_ensure`` with the constraints file and who asked; older
    Slicer: ``slicer.util.pip_install`` with the constraints."""
    import sys
    import types

    import slicer.util

    constraints = str(tmp_path / "constraints.txt")
    calls = []
    monkeypatch.setattr(slicer.util, "pip_install", lambda *a, **k: calls.append(("pip_install", a, k)),
                        raising=False)
    monkeypatch.setitem(sys.modules, "slicer.pydeps", None)      # an older Slicer: no pydeps
    deps.slicer_pip_install("scipy>=1.8", constraints)
    assert calls == [("pip_install", ("scipy>=1.8",), {"constraints": constraints})]
    pydeps = types.ModuleType("slicer.pydeps")
    pydeps.pip_ensure = lambda reqs, **k: calls.append(("pip_ensure", [str(r) for r in reqs], k))
    monkeypatch.setitem(sys.modules, "slicer.pydeps", pydeps)
    deps.slicer_pip_install("scipy>=1.8", constraints)
    assert calls[-1] == ("pip_ensure", ["scipy>=1.8"], {"constraints": constraints, "requester": "IQTEnhance"})


def test_torch_goes_through_light_the_torch_where_the_pytorch_extension_is(tmp_path, monkeypatch):
    """With the PyTorch extension (PyTorchUtils) present, torch is installed as it does it, by
    light-the-torch (installed first when missing), in the same child process chain as pip; the
    steps run in order and a failing step ends the job."""
    monkeypatch.setattr(deps, "module_available", lambda name: name == "PyTorchUtils")
    job = deps.InstallJob(["scipy", "torch>=2.1"], "/tmp/c.txt", python="py", light_the_torch=True)
    commands = job.commands()
    assert [c[:4] for c in commands] == [["py", "-m", "pip", "install"]] * 2 + [["py", "-m", "light_the_torch", "install"]]
    assert commands[0][-1] == "scipy" and commands[1][-1] == deps.LIGHT_THE_TORCH
    assert commands[2][-1] == "torch>=2.1" and all("/tmp/c.txt" in c for c in commands)
    assert deps.InstallJob(["torch>=2.1"], python="py").commands() == [
        ["py", "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off", "torch>=2.1"]]
    asked = []
    with pytest.raises(deps.DependencyError, match="declined"):
        deps.start_install([deps.Missing("torch", "torch>=2.1", False)], lambda t, m: asked.append(m) or False)
    assert "light-the-torch" in asked[0]

    # the chain itself: each step a real child process; the second fails, the third never runs
    import sys
    import time

    marker = tmp_path / "third-ran"
    steps = [[sys.executable, "-c", "print('step one')"], [sys.executable, "-c", "import sys; print('two'); sys.exit(3)"],
             [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]]
    monkeypatch.setattr(deps.InstallJob, "commands", lambda self: [list(c) for c in steps])
    job = deps.InstallJob(["x"], python=sys.executable).start()
    deadline = time.monotonic() + 60
    while not job.finished:
        time.sleep(0.05)
        assert time.monotonic() < deadline
    assert job.returncode == 3 and not job.succeeded and not marker.exists()
    assert "step one" in job.output() and "two" in job.output()
    job.close()
    steps[1] = [sys.executable, "-c", "print('two')"]
    job = deps.InstallJob(["x"], python=sys.executable).start()
    while not job.finished:
        time.sleep(0.05)
    assert job.succeeded and marker.exists()
    job.close()
