"""IQT-DL and IQT-DDL: geometry through the API, the explicit dictionary sum, sliding-window inference,
model/checkpoint errors, cancel, CUDA."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import requires_cuda  # noqa: E402
from IQTEnhanceLib import api  # noqa: E402
from IQTEnhanceLib.errors import CancelledError, ModelError  # noqa: E402
from IQTEnhanceLib.grid import hq_geometry  # noqa: E402
from IQTEnhanceLib.interpolation import upsample_array  # noqa: E402
from IQTEnhanceLib.methods import get_method  # noqa: E402
from IQTEnhanceLib.methods.networks import dictionary_atoms  # noqa: E402
from IQTEnhanceLib.models import load_model, save_model  # noqa: E402
from IQTEnhanceLib.nets.architectures import build_network  # noqa: E402
from IQTEnhanceLib.nets.inference import resolve_tile, sliding_window  # noqa: E402
from IQTEnhanceLib.nets.serialization import (WEIGHTS_MEMBER, architecture_params, load_checkpoint,  # noqa: E402
                                              model_from_network, network_from_model, save_checkpoint)
from IQTEnhanceLib.volume import Volume  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_network(method, factor=4, base=4, levels=2, atoms=64, atom_size=1, seed=0):
    """A small network with every weight random (the zero-initialised heads made non-zero), so that
    its output differs clearly from linear interpolation."""
    torch.manual_seed(seed)
    net = build_network(method, factor, base, levels, atoms, atom_size)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    return net.eval()


def tiny_model(method, **kw):
    net = random_network(method, **kw)
    params = dict(architecture_params(method, net.factor, kw.get("base", 4), kw.get("levels", 2),
                                      kw.get("atoms", 64), kw.get("atom_size", 1)), lq_aspect=float(net.factor))
    return model_from_network(method, net, f"tiny_{method}", params, {"data": "random weights (test)"})


@pytest.fixture(scope="module")
def models():
    return {m: tiny_model(m) for m in ("dl", "ddl")}


def thick_volume(shape_kji, axis, rng, factor=4):
    spacing = [1.0, 1.0, 1.0]
    spacing["ijk".index(axis)] = float(factor)
    direction = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # not the identity
    return Volume(rng.uniform(10, 100, size=shape_kji).astype(np.float32), spacing, [3.0, -7.0, 11.0], direction)


@pytest.mark.parametrize("method", ["dl", "ddl"])
@pytest.mark.parametrize("axis,shape", [("k", (5, 13, 11)), ("j", (9, 3, 7)), ("i", (7, 9, 3)), ("k", (2, 3, 5))])
def test_odd_sizes_and_axes_give_the_hq_grid(models, rng, method, axis, shape):
    lq = thick_volume(shape, axis, rng)
    before = lq.array.copy()
    result = api.enhance(lq, method, model=models[method], axis=axis, device="cpu")
    expected = hq_geometry(lq, 4, axis)
    assert result.volume.array.shape == tuple(expected["shape"])
    np.testing.assert_allclose(result.volume.spacing, expected["spacing"])
    np.testing.assert_allclose(result.volume.origin, expected["origin"])
    np.testing.assert_allclose(result.volume.direction, expected["direction"])
    assert np.isfinite(result.volume.array).all()
    np.testing.assert_array_equal(lq.array, before)  # the input is never modified
    trilinear = api.enhance(lq, "trilinear", axis=axis).volume.array
    assert np.abs(result.volume.array - trilinear).max() > 1e-3  # the network did something


@pytest.mark.parametrize("method", ["dl", "ddl"])
def test_axis_orders_agree(models, rng, method):
    """The same data acquired with thick k or thick i gives the same (transposed) output."""
    lq_k = thick_volume((6, 16, 12), "k", rng)
    lq_i = Volume(np.ascontiguousarray(np.moveaxis(lq_k.array, 0, 2)), [4.0, 1.0, 1.0])
    out_k = api.enhance(lq_k, method, model=models[method], axis="k").volume.array
    out_i = api.enhance(lq_i, method, model=models[method], axis="i").volume.array
    # both put the thick axis first in the same canonical array [6, 16, 12]: identical outputs
    assert out_i.shape == (16, 12, 24)
    np.testing.assert_allclose(np.moveaxis(out_i, 2, 0), out_k, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("atom_size", [1, 3])
def test_ddl_output_is_the_explicit_dictionary_sum(rng, atom_size):
    net = random_network("ddl", factor=3, base=4, levels=2, atoms=64, atom_size=atom_size)
    x = torch.from_numpy(rng.uniform(0, 1, size=(2, 1, 5, 8, 7)).astype(np.float32))
    with torch.no_grad():
        out = net(x).numpy()[:, 0]
        coefficients = net.coefficients(x).numpy()
    atoms = dictionary_atoms(net)                                  # K × f × n × n
    assert atoms.shape == (64, 3, atom_size, atom_size)
    np.testing.assert_allclose(coefficients.sum(axis=1), 1.0, rtol=1e-5)
    assert coefficients.min() >= 0.0
    f, n, c = 3, atom_size, atom_size // 2
    for b in range(2):
        expected = upsample_array(x.numpy()[b, 0], f, 0, "trilinear")
        m_lq, a_lq, b_lq = x.shape[2:]
        padded = np.zeros((m_lq * f, a_lq + 2 * c, b_lq + 2 * c), dtype=np.float64)
        for m in range(m_lq):
            for a in range(a_lq):
                for bb in range(b_lq):
                    block = np.tensordot(coefficients[b, :, m, a, bb], atoms, axes=1)   # f × n × n
                    padded[m * f:(m + 1) * f, a:a + n, bb:bb + n] += block
        expected = expected + padded[:, c:c + a_lq, c:c + b_lq]
        np.testing.assert_allclose(out[b], expected, rtol=1e-4, atol=1e-5)


def test_dictionary_is_a_named_parameter_stored_in_the_model_file(models):
    model = models["ddl"]
    net = network_from_model(model)
    assert "dictionary" in dict(net.named_parameters())
    np.testing.assert_array_equal(dictionary_atoms(model), net.dictionary.detach().numpy())
    with pytest.raises(ModelError, match="only ddl"):
        dictionary_atoms(models["dl"])


@pytest.mark.parametrize("method", ["dl", "ddl"])
def test_untrained_network_is_linear_interpolation(rng, method):
    net = build_network(method, 4, 4, 2)
    x = torch.from_numpy(rng.uniform(0, 1, size=(1, 1, 6, 9, 10)).astype(np.float32))
    with torch.no_grad():
        out = net(x).numpy()[0, 0]
    np.testing.assert_allclose(out, upsample_array(x.numpy()[0, 0], 4, 0, "trilinear"), atol=1e-5)


def test_one_tile_equals_the_network_on_the_whole_volume(rng):
    net = random_network("ddl")
    lq = rng.uniform(0, 1, size=(6, 12, 16)).astype(np.float32)
    out = sliding_window(net, lq, tile_thick=6, tile_inplane=16)
    with torch.no_grad():
        direct = net(torch.from_numpy(lq)[None, None]).numpy()[0, 0]
    np.testing.assert_allclose(out, direct, rtol=1e-5, atol=1e-5)


def test_overlapping_tiles_approach_the_whole_volume_result(rng):
    """Tile borders lack context; overlap with Gaussian blending hides them (a random network, very
    sensitive to context, measured: relative error 0.52 without overlap, 0.20 with overlap 0.5)."""
    net = random_network("dl", seed=3)
    lq = rng.uniform(0, 1, size=(24, 64, 64)).astype(np.float32)
    with torch.no_grad():
        direct = net(torch.from_numpy(lq)[None, None]).numpy()[0, 0]
    scale = np.sqrt(np.mean((direct - upsample_array(lq, 4, 0, "trilinear")) ** 2))
    error = {ov: np.sqrt(np.mean((sliding_window(net, lq, tile_thick=12, tile_inplane=32, overlap=ov) - direct) ** 2))
             / scale for ov in (0.0, 0.5)}
    assert error[0.5] < 0.3 and error[0.5] < 0.6 * error[0.0]


def test_tiles_fit_the_volume():
    assert resolve_tile((3, 5, 7), 0, 0, 4, "cpu")[0] == (3, 8, 8)          # padded to one tile
    for shape, wanted in [((40, 200, 180), (0, 0)), ((45, 217, 181), (0, 0)), ((23, 101, 77), (10, 30))]:
        tile, stride = resolve_tile(shape, *wanted, 4, "cpu", overlap=0.25)
        limit = (wanted[0] or 12, wanted[1] or 96, wanted[1] or 96)
        assert all(t <= m for t, m in zip(tile, limit)) and tile[1] % 4 == 0 and tile[2] % 4 == 0
        for size, t, st in zip(shape, tile, stride):
            n = (size - t + st - 1) // st + 1                      # tiles along the axis
            assert (n - 1) * st + t >= size                        # every voxel covered
            assert t - st >= 0.25 * t - 1 or n == 1                # neighbours overlap by ~25%


def test_cancel_stops_inference(models, rng):
    lq = thick_volume((12, 60, 60), "k", rng)
    calls, checks = [], []

    def cancel():
        checks.append(1)
        return len(checks) > 8   # the engine checks before every batch and at every progress call

    with pytest.raises(CancelledError):
        api.enhance(lq, "dl", model=models["dl"], progress=lambda f, m: calls.append(f), cancel=cancel,
                    tile_thick=4, tile_inplane=16)   # 100 tiles, 2 per batch
    assert max(calls) < 0.2


def test_progress_reaches_the_end(models, rng):
    lq = thick_volume((6, 20, 20), "k", rng)
    calls = []
    api.enhance(lq, "ddl", model=models["ddl"], progress=lambda f, m: calls.append((f, m)), tile_inplane=8)
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("tiles" in m for _, m in calls)


def test_specs_describe_the_methods():
    for name in ("dl", "ddl"):
        spec = get_method(name)
        assert spec.needs_model and spec.needs_torch and spec.train is not None
        assert {"overlap", "batch_size", "tile_inplane"} <= {o.name for o in spec.options}
        assert {"minutes", "steps", "lr", "validation_fraction", "checkpoint_dir",
                "resume", "patch_inplane"} <= {o.name for o in spec.train_options}
    atoms = next(o for o in get_method("ddl").train_options if o.name == "atoms")
    assert atoms.choices == (64, 128, 256)


# -- model files and checkpoints that do not fit ------------------------------------------------------
def test_corrupt_weights_give_a_clear_error(models, tmp_path, rng):
    model = models["dl"]
    bad = model_from_network("dl", network_from_model(model), "bad", dict(model.params), {})
    bad.blobs[WEIGHTS_MEMBER] = b"PK\x03\x04 not a torch file" + bytes(100)
    path = save_model(tmp_path / "bad.iqtm", bad)
    with pytest.raises(ModelError, match="corrupt"):
        api.enhance(thick_volume((4, 8, 8), "k", rng), "dl", model=path)


def test_flipped_byte_in_the_file_gives_a_clear_error(models, tmp_path):
    path = save_model(tmp_path / "m.iqtm", models["ddl"])
    data = bytearray(path.read_bytes())
    start = bytes(data).find(models["ddl"].blobs[WEIGHTS_MEMBER])   # stored uncompressed
    assert start > 0
    data[start + 200] ^= 0xFF   # a byte inside the weights
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt|checksum"):
        load_model(path)


def test_weights_of_another_architecture_give_a_clear_error(models, rng):
    model = models["dl"]
    wider = model_from_network("dl", network_from_model(model), "m", dict(model.params, base_filters=8), {})
    with pytest.raises(ModelError, match="shape|fit"):
        api.enhance(thick_volume((4, 8, 8), "k", rng), "dl", model=wider)
    deeper = model_from_network("dl", network_from_model(model), "m", dict(model.params, levels=3), {})
    with pytest.raises(ModelError, match="do not fit"):
        network_from_model(deeper)
    ddl_as_dl = model_from_network("dl", network_from_model(model), "m", dict(models["ddl"].params), {})
    with pytest.raises(ModelError, match="architecture"):
        network_from_model(ddl_as_dl)
    with pytest.raises(ModelError, match="not a dl model"):
        api.enhance(thick_volume((4, 8, 8), "k", rng), "dl", model=models["ddl"])


def test_model_for_another_factor_is_refused(models, rng):
    with pytest.raises(ModelError, match="×4"):
        api.enhance(thick_volume((4, 8, 8), "k", rng), "ddl", model=models["ddl"], factor=3)


def test_checkpoint_of_another_setup_or_corrupt_gives_a_clear_error(models, tmp_path):
    arch = architecture_params("ddl", 4, 4, 2, 64, 1)
    net = network_from_model(models["ddl"])
    path = save_checkpoint(tmp_path / "ddl_last.pt", {"method": "ddl", "arch": arch, "model": net.state_dict()})
    assert load_checkpoint(path, "ddl", arch)["arch"] == arch
    with pytest.raises(ModelError, match="atoms"):
        load_checkpoint(path, "ddl", dict(arch, atoms=128))
    with pytest.raises(ModelError, match="cannot resume dl"):
        load_checkpoint(path, "dl", architecture_params("dl", 4, 4, 2))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelError, match="corrupt"):
        load_checkpoint(path, "ddl", arch)
    with pytest.raises(ModelError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt", "ddl", arch)


# -- CUDA ----------------------------------------------------------------------------------------------
@requires_cuda
@pytest.mark.parametrize("method", ["dl", "ddl"])
def test_cuda_inference_matches_cpu(models, rng, method):
    lq = thick_volume((10, 40, 36), "k", rng)
    cpu = api.enhance(lq, method, model=models[method], device="cpu").volume.array
    gpu = api.enhance(lq, method, model=models[method], device="cuda")
    assert gpu.info["device"] == "cuda"
    np.testing.assert_allclose(gpu.volume.array, cpu, rtol=1e-3, atol=1e-2)


@requires_cuda
def test_cuda_batch_size_comes_from_free_memory(models):
    from IQTEnhanceLib.nets.inference import auto_batch_size

    net = network_from_model(models["ddl"], "cuda")
    assert 1 <= auto_batch_size(net, (16, 160, 160), "cuda") <= 64


DDL_VARIANTS = [dict(generator=g, compensation=c) for g in (False, True) for c in (False, True)] + \
    [dict(gain="signed"), dict(gain="positive", compensation=True), dict(gain="signed", generator=True)]


def _variant_id(variant: dict) -> str:
    return "-".join(k if on is True else f"{k}-{on}" for k, on in variant.items() if on) or "free"


@pytest.mark.parametrize("variant", DDL_VARIANTS, ids=_variant_id)
@pytest.mark.parametrize("factor,shape", [(4, (5, 13, 11)), (3, (3, 7, 9)), (2, (7, 5, 6))])
def test_ddl_variants_give_hq_shapes_and_start_as_linear_interpolation(rng, variant, factor, shape):
    """The SRDD variants (dictionary generator, compensation branch) on odd sizes: HQ grid shape, and the
    untrained network is exactly linear interpolation (zero logits, centred atoms)."""
    net = build_network("ddl", factor, 4, 2, 64, 1, 0, logit_scale=2.0, **variant)
    x = torch.from_numpy(rng.uniform(0, 1, size=(2, 1) + shape).astype(np.float32))
    with torch.no_grad():
        out = net(x).numpy()
    assert out.shape == (2, 1, shape[0] * factor) + shape[1:]
    for b in range(2):
        np.testing.assert_allclose(out[b, 0], upsample_array(x.numpy()[b, 0], factor, 0, "trilinear"), atol=1e-5)
    assert net.coefficients(x).shape[1] == 64 * (2 if variant.get("compensation") else 1)


def test_ddl_gain_scales_the_softmax_weights_and_is_kept_in_the_model_file(rng):
    """With a gain the coefficients of a voxel sum to its gain (1 at the start), not to 1; the gain
    kind travels in the model file's parameters, and a file without it is SRDD's plain softmax."""
    from IQTEnhanceLib.nets.serialization import model_from_network, network_from_model

    x = torch.from_numpy(rng.uniform(0, 1, size=(1, 1, 4, 9, 7)).astype(np.float32))
    for gain in ("signed", "positive"):
        torch.manual_seed(2)
        net = build_network("ddl", 4, 4, 2, 64, 1, 0, gain=gain)
        with torch.no_grad():
            np.testing.assert_allclose(net.coefficients(x).sum(1).numpy(), 1.0, atol=1e-5)
            for p in net.parameters():
                p.normal_(0.0, 0.1)
            net.tail[-1].bias[-1] = -3.0                # the gain channel comes last: t ≈ -3
            sums = net.coefficients(x).sum(1).numpy()
        # no longer a convex combination: signed 1 + t ≈ -2, positive softplus(t + 0.54) ≈ 0.08
        assert ((sums < -1.5) & (sums > -2.5)).all() if gain == "signed" else ((sums > 0) & (sums < 0.2)).all()
        params = dict(architecture_params("ddl", 4, 4, 2, 64, 1, 0, gain=gain), lq_aspect=4.0)
        assert params["gain"] == gain
        again = network_from_model(model_from_network("ddl", net.eval(), "gain", params, {}), "cpu")
        with torch.no_grad():
            np.testing.assert_allclose(again(x).numpy(), net(x).numpy(), atol=1e-5)
    assert "gain" not in architecture_params("ddl", 4, 4, 2, 64, 1)
    with pytest.raises(ValueError, match="gain must be one of"):
        build_network("ddl", 4, 4, 2, 64, 1, 0, gain="sigmoid")


@pytest.mark.parametrize("axis", ["i", "j", "k"])
def test_ddl_variant_through_the_api_on_every_axis(rng, axis):
    """A trained-looking (random) generator + compensation network as a model file: the output lies
    on the HQ grid along each thick axis and differs from interpolation."""
    from IQTEnhanceLib.nets.serialization import architecture_params, model_from_network

    torch.manual_seed(1)
    net = build_network("ddl", 3, 4, 2, 64, 1, 0, generator=True, compensation=True)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    params = dict(architecture_params("ddl", 3, 4, 2, 64, 1, 0, True, True), lq_aspect=3.0)
    model = model_from_network("ddl", net.eval(), "variant", params, {})
    shape = [9, 10, 11]
    shape["ijk".index(axis)] = 4
    spacing = [1.0, 1.0, 1.0]
    spacing["ijk".index(axis)] = 3.0
    lq = Volume(rng.uniform(0, 1, size=shape[::-1]).astype(np.float32), spacing)
    out = api.enhance(lq, "ddl", model=model, axis=axis, factor=3).volume
    expected = list(shape)
    expected["ijk".index(axis)] = 12
    assert out.array.shape == tuple(expected[::-1])
    linear = api.enhance(lq, "trilinear", axis=axis, factor=3).volume
    assert np.abs(out.array - linear.array).max() > 1e-3
    # the generator's atoms are stored for inspection and equal what the network uses
    np.testing.assert_allclose(model.arrays["dictionary"], dictionary_atoms(net), atol=1e-6)


def test_dictionary_generator_needs_a_power_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        build_network("ddl", 4, 4, 2, 96, 1, 0, generator=True)


def test_cli_shows_and_draws_the_dictionary(models, tmp_path, capsys):
    from IQTEnhanceApps import cli
    from IQTEnhanceLib.models import save_model

    path = tmp_path / "ddl.iqtm"
    save_model(path, models["ddl"])
    png = tmp_path / "atoms.png"
    assert cli.main(["models", "--show-dictionary", str(path), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    atoms = dictionary_atoms(models["ddl"])
    lines = [line for line in out.splitlines() if line.strip().startswith("atom ")]
    assert len(lines) == atoms.shape[0]
    norms = [float(line.split("norm")[1].split()[0]) for line in lines]
    assert norms == sorted(norms, reverse=True)
    assert abs(norms[0] - float(np.sqrt((atoms ** 2).reshape(len(atoms), -1).sum(1)).max())) < 1e-3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["models", "--show-dictionary", "default"]) == 0
    assert cli.main(["models", "--show-dictionary", str(tmp_path / "missing.iqtm")]) != 0


def test_unetpp_body_can_compute_a_unet_bodys_features(rng):
    """UNet++ contains the plain U-Net: its encoders, and its decoders on the last node of each depth
    with the nested nodes' inputs weighted zero, give the same features."""
    from IQTEnhanceLib.nets.architectures import UNetBody, UNetPlusPlusBody

    for levels in (2, 3):
        torch.manual_seed(levels)
        unet, nested = UNetBody(4, levels), UNetPlusPlusBody(4, levels)
        x = torch.from_numpy(rng.random((2, 1, 5, 8, 12), dtype=np.float32))
        with torch.no_grad():
            before = nested(x)
            nested.copy_unet(unet)
            expected, got = unet(x), nested(x)
        assert float((before - expected).abs().max()) > 1e-3     # not equal by accident
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        UNetPlusPlusBody(4, 3).copy_unet(UNetBody(4, 2))


@pytest.mark.parametrize("compensation,atom_size", [(False, 1), (True, 1), (True, 3)])
def test_ddl_started_from_a_unet_reproduces_it(rng, compensation, atom_size):
    """start_from_unet: body copied, tail and atoms set so that the softmax synthesis gives the U-Net's
    residual to first order; the error falls as the atoms grow (the logits shrink)."""
    from IQTEnhanceLib.nets.architectures import DeepDictionaryNet

    unet = random_network("dl", base=4, levels=2, seed=1)
    x = torch.from_numpy(rng.random((1, 1, 4, 12, 10), dtype=np.float32))
    with torch.no_grad():
        residual = unet.residual(x)
    atoms = torch.from_numpy(rng.standard_normal((64, 4)).astype(np.float32))
    errors = []
    for scale in (1.0, 30.0, 1000.0):
        ddl = DeepDictionaryNet(4, 4, 2, 64, atom_size, tail_width=8, compensation=compensation).eval()
        ddl.start_from_unet(unet, scale * atoms)
        with torch.no_grad():
            errors.append(float((ddl(x) - unet(x)).pow(2).mean().sqrt() / residual.pow(2).mean().sqrt()))
        # the stored dictionary is the one that synthesises (centre column of each atom)
        assert float(ddl.atoms_tensor().detach()[:, :, atom_size // 2, atom_size // 2].abs().max()) > 0.5 * scale
    assert errors[0] > 0.1 and errors[2] < 0.01 and errors[1] < errors[0], errors


def test_ddl_start_from_unet_refuses_what_cannot_fit():
    from IQTEnhanceLib.nets.architectures import DeepDictionaryNet

    unet = random_network("dl", base=4, levels=2)
    atoms = torch.randn(64, 4)
    with pytest.raises(ValueError, match="at least 8 wide"):
        DeepDictionaryNet(4, 4, 2, 64).start_from_unet(unet, atoms)
    with pytest.raises(ValueError, match="generator"):
        DeepDictionaryNet(4, 4, 2, 64, tail_width=8, generator=True).start_from_unet(unet, atoms)
    with pytest.raises(ValueError, match="×4"):
        DeepDictionaryNet(2, 4, 2, 64, tail_width=8).start_from_unet(unet, torch.randn(64, 2))


@pytest.mark.parametrize("variant", [{}, {"compensation": True}, {"compensation": True, "gain": "positive"},
                                     {"gain": "signed", "generator": True}], ids=_variant_id)
def test_ddl_fast_synthesis_equals_the_coefficient_path(rng, variant):
    """1×1 atoms take a channels-last path (softmax and atom product over the innermost axis); it must
    give the sums of coefficients() + synthesize() exactly (up to float rounding)."""
    torch.manual_seed(3)
    net = build_network("ddl", 4, 4, 2, 64, 1, **variant)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    net.eval()
    x = torch.from_numpy(rng.random((2, 1, 3, 10, 6), dtype=np.float32))
    with torch.no_grad():
        fast = net.residual(x)
        slow = net._combine(*net._syntheses_by_convolution(x))
    assert float(slow.abs().max()) > 1e-3
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
