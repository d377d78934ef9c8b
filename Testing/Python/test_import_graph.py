"""The layers: the engine (IQTEnhanceLib) never imports Slicer, Qt, CTK or VTK, and its engine
modules never import the applications built on it (the command line, batch, study), not even
inside a function.  Read from the source with ast, so a lazy import counts too."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "IQTEnhance" / "IQTEnhanceLib"
APPLICATIONS = {"cli", "batch", "study"}          # IQTEnhanceLib modules that are applications
FORBIDDEN_TOP = {"slicer", "qt", "ctk", "vtk", "IQTEnhanceSlicer", "PythonQt"}


def imports_of(path: Path) -> set:
    """Absolute module names a file imports (relative imports resolved within IQTEnhanceLib)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ["IQTEnhanceLib"] + list(path.relative_to(ENGINE).parent.parts)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                names.add(module)
                names.update(f"{module}.{alias.name}" for alias in node.names)
            elif node.module:
                names.add(node.module)
    return names


def test_engine_imports_no_slicer_qt_ctk_or_vtk():
    offenders = {}
    for path in ENGINE.rglob("*.py"):
        bad = {n for n in imports_of(path) if n.split(".")[0] in FORBIDDEN_TOP}
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, offenders


def test_engine_modules_do_not_import_the_applications():
    offenders = {}
    for path in ENGINE.rglob("*.py"):
        if path.parent == ENGINE and path.stem in APPLICATIONS:
            continue
        bad = {n for n in imports_of(path)
               if n.startswith("IQTEnhanceLib.") and n.split(".")[1] in APPLICATIONS}
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, offenders


def test_the_scan_sees_lazy_imports(tmp_path):
    """The checker itself: an import inside a function is found."""
    probe = ENGINE / "methods" / "srep.py"
    assert "IQTEnhanceLib.patches.PatchAccumulator" in imports_of(probe)
