"""The contract every registered method keeps, checked on each one by the same tests: its options
validate through the one validator with one message format, its extra-map switch works, and
enhancing a real fixture returns a volume on the input's HQ grid."""
import numpy as np
import pytest

from IQTEnhanceLib import api
from IQTEnhanceLib.errors import InputError
from IQTEnhanceLib.grid import hq_geometry
from IQTEnhanceLib.methods import available_methods, get_method
from IQTEnhanceLib.models import shipped_models
from IQTEnhanceLib.simulate import SimulationParameters, simulate
from IQTEnhanceLib.volume import Volume

METHODS = available_methods()


def bad_values(option):
    """Values the option's declaration refuses."""
    if option.choices:
        yield "no-such-choice"
    elif option.type is bool:
        yield "maybe"
    elif option.type in (int, float):
        yield "not-a-number"
        if option.type is int:
            yield 1.5
        if option.minimum is not None:
            yield option.minimum - 1 if not option.min_exclusive else option.minimum
        if option.maximum is not None:
            yield option.maximum + 1 if not option.max_exclusive else option.maximum


@pytest.mark.parametrize("method", METHODS)
def test_defaults_validate_and_unknown_names_are_refused(method):
    spec = get_method(method)
    for train in (False, True):
        declared = spec.train_options if train else spec.options
        checked = spec.validate_options({}, train=train)
        assert checked == {o.name: o.default for o in declared}
        with pytest.raises(InputError, match=f"method {method} has no option\\(s\\) no_such_option"):
            spec.validate_options({"no_such_option": 1}, train=train)


@pytest.mark.parametrize("method", METHODS)
def test_bad_values_give_the_one_message_format(method):
    spec = get_method(method)
    for train, declared in ((False, spec.options), (True, spec.train_options)):
        for option in declared:
            for value in bad_values(option):
                with pytest.raises(InputError) as caught:
                    spec.validate_options({option.name: value}, train=train)
                text = str(caught.value)
                assert text.startswith(f"option {option.name} of {method} must be ") and "(got " in text, text
            # strings from a command line or a form are converted by the same declaration
            if option.type in (int, float) and not option.choices:
                assert spec.validate_options({option.name: str(option.default)}, train=train)[option.name] \
                    == option.default


@pytest.fixture(scope="module")
def small_lq(colin):
    hq, mask = colin
    lq, _ = simulate(hq, SimulationParameters(factor=4, axis="k", snr=20.0, seed=2), mask=mask)
    return Volume(lq.array[:, 10:50, 8:48].astype(np.float32), lq.spacing, lq.physical_point([8, 10, 0]),
                  lq.direction)


@pytest.mark.parametrize("method", METHODS)
def test_enhance_returns_the_hq_grid_and_the_extra_switch_works(method, small_lq):
    spec = get_method(method)
    if spec.needs_model and not shipped_models(method):
        pytest.skip(f"no shipped {method} model")
    result = api.enhance(small_lq, method, device="cpu", axis="k")
    expected = hq_geometry(small_lq, result.info["factor"], "k")
    assert result.volume.array.shape == tuple(expected["shape"])
    assert np.allclose(result.volume.spacing, expected["spacing"]) and np.allclose(result.volume.origin,
                                                                                   expected["origin"])
    assert np.isfinite(result.volume.array).all() and not result.extras
    switches = spec.extra_switches()
    assert set(switches) <= set(spec.extras)
    for extra, option in switches.items():
        with_extra = api.enhance(small_lq, method, device="cpu", axis="k", **{option: True})
        assert extra in with_extra.extras
        assert with_extra.extras[extra].array.shape == result.volume.array.shape
        np.testing.assert_allclose(with_extra.volume.array, result.volume.array, rtol=1e-5, atol=1e-3)


def test_one_preflight_then_execute(small_lq, monkeypatch):
    """api.plan resolves method, model, factor, axis, device, options and memory once; a fault is
    raised there, before any work; execute runs the plan and equals enhance."""
    planned = api.plan(small_lq, "srep", device="cpu", options={"stride_inplane": "2"})
    assert planned.factor == 4 and planned.axis == "k" and planned.model.method == "srep"
    assert planned.options["stride_inplane"] == 2 and planned.options["lam"] == 0.0
    assert planned.geometry["shape"] == (small_lq.array.shape[0] * 4,) + small_lq.array.shape[1:]
    assert planned.memory_bytes > 0
    done = api.execute(small_lq, planned)
    again = api.enhance(small_lq, "srep", device="cpu", stride_inplane=2)
    np.testing.assert_array_equal(done.volume.array, again.volume.array)
    assert done.info["options"] == again.info["options"]
    calls = []
    monkeypatch.setattr(get_method("srep"), "enhance", lambda *a, **k: calls.append(1))
    for bad in ({"stride_inplane": 0}, {"no_such": 1}):
        with pytest.raises(InputError):
            api.plan(small_lq, "srep", device="cpu", options=bad)
    monkeypatch.setenv("IQT_MEMORY_LIMIT", "1K")
    with pytest.raises(InputError, match="memory"):
        api.plan(small_lq, "srep", device="cpu")
    assert not calls
    other = Volume(small_lq.array[:, :20], small_lq.spacing, small_lq.origin, small_lq.direction)
    with pytest.raises(InputError, match="plan was made for"):
        api.execute(other, planned)
