"""The extension's build files against the files on disk, and the panel's .ui against IQTEnhance.py.

The script and resource lists of IQTEnhance/CMakeLists.txt are evaluated by CMake itself (``cmake -P``
with stand-ins for Slicer's two macros), so its globs and variables mean exactly what they mean in a
Slicer build.  Only files are read: nothing here imports qt or Slicer.
"""
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "IQTEnhance"
CMAKE = shutil.which("cmake")
needs_cmake = pytest.mark.skipif(CMAKE is None, reason="cmake is not installed (apt-get install cmake)")

STAND_INS = """
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(ARG "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  file(APPEND "${OUT}" "NAME=${ARG_NAME}\\nGENERIC_TESTS=${ARG_WITH_GENERIC_TESTS}\\n")
  foreach(item ${ARG_SCRIPTS})
    file(APPEND "${OUT}" "SCRIPT=${item}\\n")
  endforeach()
  foreach(item ${ARG_RESOURCES})
    file(APPEND "${OUT}" "RESOURCE=${item}\\n")
  endforeach()
endfunction()
function(slicer_add_python_unittest)
  cmake_parse_arguments(ARG "" "SCRIPT" "" ${ARGN})
  file(APPEND "${OUT}" "UNITTEST=${ARG_SCRIPT}\\n")
endfunction()
set(BUILD_TESTING ON)
set(CMAKE_CURRENT_SOURCE_DIR "${MODULE_DIR}")
include("${MODULE_DIR}/CMakeLists.txt")
"""


@pytest.fixture(scope="module")
def cmake_lists(tmp_path_factory):
    work = tmp_path_factory.mktemp("cmake")
    script, out = work / "evaluate.cmake", work / "lists.txt"
    script.write_text(STAND_INS)
    run = subprocess.run([CMAKE, f"-DOUT={out}", f"-DMODULE_DIR={MODULE}", "-P", str(script)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"IQTEnhance/CMakeLists.txt does not evaluate:\n{run.stderr}"
    lists = {"SCRIPT": [], "RESOURCE": [], "NAME": [], "GENERIC_TESTS": [], "UNITTEST": []}
    for line in out.read_text().splitlines():
        key, _, value = line.partition("=")
        lists[key].append(value)
    return lists


def files_on_disk(base: Path, pattern: str) -> set:
    """Files the module must ship: not hidden (temporary .partial files), not caches or build output."""
    found = set()
    for path in base.rglob(pattern):
        rel = path.relative_to(MODULE)
        if not path.is_file() or any(p.startswith(".") or p == "__pycache__" or p.endswith(".egg-info")
                                     for p in rel.parts):
            continue
        found.add(rel.as_posix())
    return found


@needs_cmake
def test_module_is_registered_with_generic_and_unit_tests(cmake_lists):
    assert cmake_lists["NAME"] == ["IQTEnhance"]
    assert cmake_lists["GENERIC_TESTS"] == ["TRUE"]
    assert cmake_lists["UNITTEST"] == ["IQTEnhance.py"]


@needs_cmake
def test_every_python_file_of_the_module_is_a_listed_script(cmake_lists):
    listed = set(cmake_lists["SCRIPT"])
    missing = sorted(files_on_disk(MODULE, "*.py") - listed)
    assert not missing, (
        "Python files that the Slicer extension would not ship: " + ", ".join(missing) + ". "
        "Files under IQTEnhanceLib/, IQTEnhanceApps/ and IQTEnhanceSlicer/ are globbed; anything else must be added to "
        "MODULE_PYTHON_SCRIPTS in IQTEnhance/CMakeLists.txt.")
    assert "IQTEnhance.py" in listed and "IQTEnhanceLib/api.py" in listed and "IQTEnhanceSlicer/mrml.py" in listed
    assert "IQTEnhanceApps/cli/main.py" in listed


@needs_cmake
def test_every_resource_file_is_listed(cmake_lists):
    listed = set(cmake_lists["RESOURCE"])
    missing = sorted(files_on_disk(MODULE / "Resources", "*") - listed)
    assert not missing, (
        "Resource files that the Slicer extension would not ship: " + ", ".join(missing) + ". "
        "Add them to MODULE_PYTHON_RESOURCES in IQTEnhance/CMakeLists.txt (Resources/Models/ globs *.iqtm, "
        "*.json and *.md; another kind of model file needs its own pattern there).")


@needs_cmake
def test_listed_files_exist_once(cmake_lists):
    for kind in ("SCRIPT", "RESOURCE"):
        items = cmake_lists[kind]
        assert len(items) == len(set(items)), f"listed twice: {sorted({i for i in items if items.count(i) > 1})}"
        absent = [i for i in items if not (MODULE / i).is_file()]
        assert not absent, f"IQTEnhance/CMakeLists.txt lists files that do not exist: {absent}"
        hidden = [i for i in items if any(p.startswith(".") for p in Path(i).parts)]
        assert not hidden, f"hidden (temporary) files would be shipped: {hidden}"


def _cmake_set(text: str, name: str) -> str:
    match = re.search(rf'set\({name}\s+"([^"]*)"\)', text)
    assert match, f"top-level CMakeLists.txt does not set {name}"
    return match.group(1)


def test_extension_metadata_is_complete_and_points_at_files_that_exist():
    text = (ROOT / "CMakeLists.txt").read_text()
    for name in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                 "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert _cmake_set(text, name).strip(), f"{name} is empty"
    assert "2411.05885" in _cmake_set(text, "EXTENSION_DESCRIPTION")
    # the Extensions Index asks for "Name (Organisation)" per contributor and a one- or two-sentence description
    for contributor in _cmake_set(text, "EXTENSION_CONTRIBUTORS").split(","):
        assert re.fullmatch(r"[^()]+ \([^()]+\)", contributor.strip()), contributor
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", _cmake_set(text, "EXTENSION_DESCRIPTION")) if s]
    assert 1 <= len(sentences) <= 2, sentences
    module = (MODULE / "IQTEnhance.py").read_text()
    contributors = re.search(r"self\.parent\.contributors = \[([^\]]*)\]", module).group(1)
    assert _cmake_set(text, "EXTENSION_CONTRIBUTORS") in contributors
    assert re.search(r"add_subdirectory\(IQTEnhance\)", text)
    assert "include(${Slicer_EXTENSION_CPACK})" in text
    for name in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in _cmake_set(text, name).split():
            path = url.split("/main/", 1)[1]
            assert (ROOT / path).is_file(), f"{name} points at {path}, which is not in the repository"
            assert (ROOT / path).stat().st_size > 1000


def test_module_icon_is_a_128_pixel_png():
    for icon in (MODULE / "Resources/Icons/IQTEnhance.png", ROOT / "Resources/IQTEnhance.png"):
        data = icon.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (128, 128), f"{icon}: {width}x{height}"


def test_ui_file_matches_the_widget_code():
    """Every ``self.ui.<name>`` the widget uses exists in the .ui, and every SlicerParameterName is a
    parameter of the parameter node."""
    ui = ET.parse(MODULE / "Resources/UI/IQTEnhance.ui")
    names = {w.get("name") for w in ui.iter("widget")}
    code = (MODULE / "IQTEnhance.py").read_text()
    used = set(re.findall(r"self\.ui\.([A-Za-z_]\w*)", code)) | set(re.findall(r"widget\.ui\.([A-Za-z_]\w*)", code))
    assert used, "the widget code uses no .ui widgets?"
    assert not (used - names), f"IQTEnhance.py uses widgets missing from the .ui: {sorted(used - names)}"
    block = code[code.index("annotations = {", code.index("def _makeParameterNodeClass")):]
    block = block[:block.index("}")]
    parameters = set(re.findall(r'"(\w+)":', block))
    bound = {p.find("string").text for w in ui.iter("widget") for p in w.findall("property")
             if p.get("name") == "SlicerParameterName"}
    assert bound and not (bound - parameters), f"the .ui binds unknown parameters: {sorted(bound - parameters)}"
    for resource in re.findall(r'resourcePath\("([^"]+)"\)', code):
        assert (MODULE / "Resources" / resource).is_file(), f"IQTEnhance.py loads missing resource {resource}"


def test_extensions_index_entry_agrees_with_the_extension_metadata():
    """IQTEnhance.json is the draft catalog entry for Slicer's Extensions Index: its category,
    dependencies and repository must be those CMakeLists.txt declares."""
    import json
    import re

    entry = json.loads((ROOT / "IQTEnhance.json").read_text())
    cmake = (ROOT / "CMakeLists.txt").read_text()

    def declared(name):
        return re.search(rf'set\({name} "([^"]*)"\)', cmake).group(1)

    assert entry["category"] == declared("EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == declared("EXTENSION_DEPENDS").split()
    assert entry["scm_url"] == declared("EXTENSION_HOMEPAGE")
    assert entry["build_subdirectory"] == "." and entry["scm_revision"]
