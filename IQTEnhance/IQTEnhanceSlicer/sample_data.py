"""The module's sample for Slicer's *Sample Data* module: a real thick-slice T1 scan, so that
"Download sample" then "Apply" works on a fresh install, offline.

``IQTEnhanceColin27ThickT1.nrrd`` (Resources/SampleData) is the committed Colin27 crop of
Testing/Data (64 × 72 × 48 voxels at 1 mm, licence in LICENSE.md beside it) reduced to ×4 thick
slices along K by :mod:`IQTEnhanceLib.simulate` (Gaussian slice profile, SNR 20, seed 0), stored as
int16: 64 × 72 × 12 voxels of 1 × 1 × 4 mm.  :func:`make_sample` rebuilds it bit for bit.
No Qt here: :func:`register` takes Slicer's ``SampleDataLogic`` class as an argument.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

SAMPLE_NAME = "IQTEnhanceThickSliceT1"
FILE_NAME = "IQTEnhanceColin27ThickT1.nrrd"
NODE_NAME = "Colin27 T1 4 mm slices"
CATEGORY = "IQT Enhance"


def sample_path(resources: Path) -> Path:
    return Path(resources) / "SampleData" / FILE_NAME


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def register(sample_data_logic, resources: Path, thumbnail: Path = None) -> dict:
    """Register the sample with Slicer's SampleData module (called once Slicer has started).
    Returns the arguments passed, for the log and the tests."""
    path = sample_path(resources)
    arguments = dict(category=CATEGORY, sampleName=SAMPLE_NAME, uris=path.resolve().as_uri(), fileNames=FILE_NAME,
                     nodeNames=NODE_NAME, checksums=f"SHA256:{sha256(path)}", loadFileType="VolumeFile")
    if thumbnail is not None:
        arguments["thumbnailFileName"] = str(thumbnail)
    sample_data_logic.registerCustomSampleDataSource(**arguments)
    return arguments


def make_sample(resources: Path) -> Path:
    """Rebuild the sample from the committed fixture (maintainers only)."""
    import numpy as np

    from IQTEnhanceLib.data import load_fixture
    from IQTEnhanceLib.simulate import SimulationParameters, simulate
    from IQTEnhanceLib.volume import write_volume

    hq, mask = load_fixture("colin27_t1")
    lq, _ = simulate(hq, SimulationParameters(factor=4, axis="k", snr=20.0, seed=0), mask=mask)
    lq = lq.with_array(np.round(lq.array).astype(np.int16))
    return write_volume(lq, sample_path(resources), dtype=None)


if __name__ == "__main__":
    print(make_sample(Path(__file__).resolve().parents[1] / "Resources"))
