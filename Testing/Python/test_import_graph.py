"""The layers: the engine (IQTEnhanceLib) never imports Slicer, Qt, CTK or VTK, nor the applications
built on it (IQTEnhanceApps: command line, demo, batch, study), not even inside a function; inside the
applications, what they share (common) imports none of them, and none imports back into the command
line; commands are registered explicitly (no module looked up by name).  Read from the source with
ast, so a lazy import counts too.  Sizes: no engine module over 600 lines, no function over 80."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "IQTEnhance" / "IQTEnhanceLib"
APPS = ROOT / "IQTEnhance" / "IQTEnhanceApps"
FORBIDDEN_TOP = {"slicer", "qt", "ctk", "vtk", "IQTEnhanceSlicer", "PythonQt"}


def imports_of(path: Path) -> set:
    """Absolute module names a file imports (relative imports resolved within its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = ENGINE if ENGINE in path.parents else APPS
    package = [top.name] + list(path.relative_to(top).parent.parts)
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
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def offenders(root: Path, bad) -> dict:
    found = {}
    for path in root.rglob("*.py"):
        hits = {n for n in imports_of(path) if bad(n)}
        if hits:
            found[str(path.relative_to(ROOT))] = sorted(hits)
    return found


def test_engine_imports_no_slicer_qt_ctk_or_vtk():
    assert not offenders(ENGINE, lambda n: n.split(".")[0] in FORBIDDEN_TOP)


def test_engine_does_not_import_the_applications():
    assert not offenders(ENGINE, lambda n: n.split(".")[0] == "IQTEnhanceApps")


def test_applications_import_no_slicer_and_nothing_back_into_the_command_line():
    assert not offenders(APPS, lambda n: n.split(".")[0] in FORBIDDEN_TOP)
    for package in ("common", "batch", "study", "demo"):
        assert not offenders(APPS / package, lambda n: n.startswith("IQTEnhanceApps.cli")), package
    assert not offenders(APPS / "common", lambda n: n.split(".")[:2] in (
        ["IQTEnhanceApps", "batch"], ["IQTEnhanceApps", "study"], ["IQTEnhanceApps", "demo"]))


def test_no_command_is_imported_by_a_name_string():
    """Commands are registered explicitly (the engine's method registry alone loads its method
    modules lazily, so that listing methods never imports torch)."""
    for path in APPS.rglob("*.py"):
        assert "import_module(" not in path.read_text(encoding="utf-8"), path


def test_the_scan_sees_lazy_imports():
    """The checker itself: an import inside a function is found."""
    probe = ENGINE / "methods" / "srep.py"
    assert "IQTEnhanceLib.patches.PatchAccumulator" in imports_of(probe)


def test_module_and_function_sizes():
    """Engine modules stay under 600 lines and functions (engine and applications) under 80."""
    long_modules = {str(p.relative_to(ROOT)): n for p in ENGINE.rglob("*.py")
                    if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert not long_modules
    long_functions = {}
    for root in (ENGINE, APPS):
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > 80:
                        long_functions[f"{path.relative_to(ROOT)}:{node.name}"] = length
    assert not long_functions, long_functions
