"""The module's Sample Data entry: a real thick-slice scan shipped with the module, registered with
Slicer's SampleData logic, that the shipped methods enhance."""
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np

from IQTEnhanceLib import api
from IQTEnhanceLib.volume import read_volume
from IQTEnhanceSlicer import sample_data

RESOURCES = Path(__file__).resolve().parents[2] / "IQTEnhance" / "Resources"


class FakeSampleDataLogic:
    registered = []

    @classmethod
    def registerCustomSampleDataSource(cls, **kwargs):
        cls.registered.append(kwargs)


def test_registration_points_at_the_shipped_file_with_its_checksum():
    arguments = sample_data.register(FakeSampleDataLogic, RESOURCES, thumbnail=RESOURCES / "Icons" / "IQTEnhance.png")
    assert FakeSampleDataLogic.registered[-1] == arguments
    path = Path(url2pathname(urlparse(arguments["uris"]).path))
    assert path.is_file() and path.name == arguments["fileNames"]
    assert arguments["checksums"] == "SHA256:" + sample_data.sha256(path)
    assert Path(arguments["thumbnailFileName"]).is_file()


def test_the_sample_is_a_thick_slice_scan_the_methods_enhance(tmp_path):
    lq = read_volume(sample_data.sample_path(RESOURCES))
    assert lq.array.dtype == np.int16 and lq.array.shape == (12, 72, 64)
    assert np.allclose(lq.spacing, [1.0, 1.0, 4.0])
    result = api.enhance(lq, "srep", device="cpu")
    assert result.volume.array.shape == (48, 72, 64) and np.allclose(result.volume.spacing, [1, 1, 1])
    # rebuilt from the committed fixture, it is the same scan
    rebuilt = read_volume(sample_data.make_sample(tmp_path))
    assert np.array_equal(rebuilt.array, lq.array) and np.allclose(rebuilt.origin, lq.origin)
