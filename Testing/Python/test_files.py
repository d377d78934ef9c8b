"""The one place that writes files: atomic replacement and JSON for numpy values."""

import json
from pathlib import Path

import numpy as np
import pytest

from IQTEnhanceLib.files import atomic_path, json_default, write_json_atomic, write_text_atomic


def test_atomic_path_replaces_only_when_the_write_completes(tmp_path):
    target = tmp_path / "report.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]

    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]


def test_atomic_path_keeps_the_suffix_and_creates_the_folder(tmp_path):
    target = tmp_path / "sub" / "out.nii.gz"
    with atomic_path(target, ".nii.gz") as tmp:
        assert tmp.name.startswith(".out.nii.gz.partial-") and tmp.name.endswith(".nii.gz")
        assert tmp.parent == target.parent
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x"


def test_json_round_trip_of_numpy_values(tmp_path):
    data = {"a": np.float32(0.5), "b": np.arange(3, dtype=np.int64), "p": Path("/x/y"), "t": (1, 2),
            "psnr": float("inf"), "cls": np.ndarray}
    path = write_json_atomic(tmp_path / "r.json", data)
    back = json.loads(path.read_text())
    assert back == {"a": 0.5, "b": [0, 1, 2], "p": "/x/y", "t": [1, 2], "psnr": float("inf"), "cls": "ndarray"}
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        json.dumps({"o": object()}, default=json_default)
