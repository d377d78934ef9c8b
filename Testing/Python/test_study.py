"""The evaluation study (IQTEnhanceApps.study): lesions, OOD variants, measures, and a smoke run."""
import dataclasses
import json
import re

import numpy as np
import pytest

from IQTEnhanceApps import study
from IQTEnhanceLib.simulate import tissue_memberships


def _case(name):
    return next(c for c in study.fixture_cases() if c.name == name)


LOADER = study.dataset_loader(fixtures=True)


# -- lesions ----------------------------------------------------------------------------------------
def test_lesions_are_deterministic_and_have_the_intended_contrast(colin):
    image, mask = colin
    before = image.array.copy()
    spec = study.LesionSpec(radii_mm=(2.0, 4.0, 6.0), factors=(0.5, 1.5), per_kind=1)
    out1, w1, idx1, lesions1 = study.insert_lesions(image, mask, spec, seed=3)
    out2, w2, idx2, lesions2 = study.insert_lesions(image, mask, spec, seed=3)
    out3, _, _, lesions3 = study.insert_lesions(image, mask, spec, seed=4)
    np.testing.assert_array_equal(out1.array, out2.array)
    np.testing.assert_array_equal(idx1, idx2)
    assert [p["centre_kji"] for p in lesions1] == [p["centre_kji"] for p in lesions2]
    assert [p["centre_kji"] for p in lesions1] != [p["centre_kji"] for p in lesions3]
    np.testing.assert_array_equal(image.array, before)  # the input is untouched
    assert len(lesions1) == 6 and set(np.unique(idx1)) == set(range(7))

    spacing = np.asarray(image.spacing[::-1])
    for p in lesions1:
        core = idx1 == p["id"]
        # the voxel count is that of a sphere of the radius (within discretisation)
        expected = 4 / 3 * np.pi * p["radius_mm"] ** 3 / np.prod(spacing)
        assert 0.6 * expected < core.sum() < 1.4 * expected
        # measured contrast: the lesion's inner part sits at factor × the local white-matter level
        inner = core & (w1 > 0.99)
        measured = float(out1.array[inner].mean()) / p["reference"]
        assert measured == pytest.approx(p["factor"], rel=0.03)
        # and the lesion really differs from what was there before, in the intended direction
        change = float(np.mean(out1.array[inner] - before[inner]))
        assert change < 0 if p["factor"] < 1 else change > 0
    # lesions keep apart and stay inside the brain; far from every lesion nothing changed
    centres = np.array([p["centre_kji"] for p in lesions1]) * spacing
    radii = np.array([p["radius_mm"] for p in lesions1])
    for a in range(len(centres)):
        for b in range(a + 1, len(centres)):
            assert np.linalg.norm(centres[a] - centres[b]) >= radii[a] + radii[b] + 3.0 - 1e-6
    assert np.all(mask.array[idx1 > 0] > 0)
    untouched = w1 < 1e-6
    np.testing.assert_array_equal(out1.array[untouched], before[untouched])


def test_lesions_that_do_not_fit_give_a_clear_error(colin):
    image, mask = colin
    from IQTEnhanceLib.errors import InputError

    with pytest.raises(InputError, match="no room for a lesion"):
        study.insert_lesions(image, mask, study.LesionSpec(radii_mm=(30.0,), factors=(0.5,), per_kind=1))


# -- OOD variants -----------------------------------------------------------------------------------
def test_cases_are_deterministic_with_a_seed():
    for name in ("ood_low_snr", "ood_contrast_change", "pathology"):
        a = study.prepare_case(_case(name), LOADER, seed=5)
        b = study.prepare_case(_case(name), LOADER, seed=5)
        c = study.prepare_case(_case(name), LOADER, seed=6)
        np.testing.assert_array_equal(a.lq.array, b.lq.array)
        np.testing.assert_array_equal(a.hq.array, b.hq.array)
        assert not np.array_equal(a.lq.array, c.lq.array)


def test_low_snr_case_has_the_measured_snr():
    """SNR measured from two noise draws of the same case (σ from their difference)."""
    measured = {}
    for name in ("in_distribution", "ood_low_snr"):
        a = study.prepare_case(_case(name), LOADER, seed=0)
        b = study.prepare_case(_case(name), LOADER, seed=1)
        lq_mask = a.mask.reshape(a.mask.shape[0] // 4, 4, *a.mask.shape[1:]).mean(axis=1) > 0.5
        measured[name] = study.measured_snr(a.lq.array, b.lq.array, lq_mask)
    assert measured["in_distribution"] == pytest.approx(20.0, rel=0.12)
    assert measured["ood_low_snr"] == pytest.approx(5.0, rel=0.12)
    assert not study.in_training_ranges(_case("ood_low_snr"), 4)
    assert study.in_training_ranges(_case("in_distribution"), 4)


def test_contrast_change_case_changes_the_measured_tissue_contrast():
    """White/grey matter ratio of the noise-free LQ over that of the HQ ≈ the bright/middle factor 1.4."""
    case = _case("ood_contrast_change")
    assert case.contrast == (0.6, 1.0, 1.4) and not study.in_training_ranges(case, 4)
    data = study.prepare_case(dataclasses.replace(case, snr=None), LOADER, seed=0)
    plain = study.prepare_case(dataclasses.replace(case, snr=None, contrast=(1.0, 1.0, 1.0)), LOADER, seed=0)
    hq = data.hq.array
    lq_mask = data.mask.reshape(-1, 4, *data.mask.shape[1:]).mean(axis=1) > 0.5
    memberships = tissue_memberships(plain.lq.array, lq_mask)
    ratio = (study.tissue_contrast(data.lq.array, memberships, lq_mask)
             / study.tissue_contrast(plain.lq.array, memberships, lq_mask))
    assert ratio == pytest.approx(1.4, rel=0.06)
    np.testing.assert_array_equal(hq, plain.hq.array)  # the target stays the unchanged HQ


def test_t2_case_is_an_unseen_contrast(icbm_t1, icbm_t2):
    """On the T2 the bright/middle tissue ratio inverts (WM darker than GM), unlike the training T1."""
    ratios = []
    for image, mask in (icbm_t1, icbm_t2):
        m = mask.array > 0
        p = tissue_memberships(icbm_t1[0].array, m)  # the same anatomy: T1 classes = WM/GM/CSF
        ratios.append(study.tissue_contrast(image.array, p, m))
    assert ratios[0] > 1.1 and ratios[1] < 0.95


# -- measures ---------------------------------------------------------------------------------------
def test_regression_to_mean_measure_detects_a_pull(colin):
    image, mask = colin
    truth = image.array
    m = mask.array > 0
    scale = 1000.0
    mu = float(truth[m].mean()) / scale * 0.9
    rng = np.random.default_rng(0)
    exact = study.regression_to_mean(truth, truth, m, scale, mu)
    noisy = study.regression_to_mean(truth + rng.normal(0, 20, truth.shape).astype(np.float32), truth, m, scale, mu)
    half = study.regression_to_mean(mu * scale + 0.5 * (truth - mu * scale), truth, m, scale, mu)
    assert exact["rtm_pull"] == pytest.approx(0.0, abs=1e-6)
    assert abs(noisy["rtm_pull"]) < 2.0 and abs(noisy["rtm_corr"]) < 0.1
    assert half["rtm_pull"] == pytest.approx(50.0, abs=1.0) and half["rtm_corr"] < -0.9


def test_lesion_measures_contrast_kept():
    rng = np.random.default_rng(1)
    free = rng.uniform(50, 100, (20, 20, 20)).astype(np.float32)
    index = np.zeros(free.shape, np.int16)
    index[5:9, 5:9, 5:9] = 1
    index[12:16, 12:16, 12:16] = 2
    truth = free.copy()
    truth[index == 1] *= 0.5
    truth[index == 2] *= 1.5
    lesions = [{"id": 1, "radius_mm": 2.0, "factor": 0.5}, {"id": 2, "radius_mm": 2.0, "factor": 1.5}]
    out_free = free + 1.0
    output = out_free + 0.25 * (truth - free)  # keeps a quarter of each lesion's change
    res = study.lesion_measures(output, truth, index, lesions, out_free, free)
    assert res["contrast_kept"] == pytest.approx(25.0, abs=1e-3)
    assert [r["kept"] for r in res["per_lesion"]] == pytest.approx([25.0, 25.0], abs=1e-3)
    perfect = study.lesion_measures(truth, truth, index, lesions, free, free)
    assert perfect["contrast_kept"] == pytest.approx(100.0) and perfect["lesion_nrmse"] == 0.0


# -- smoke run --------------------------------------------------------------------------------------
def _table_rows(report: str, heading: str) -> dict:
    """{first cell: [cells]} of the first Markdown table after ``heading``; and its header."""
    text = report.split(heading, 1)[1]
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    block = []
    for ln in text.splitlines()[text.splitlines().index(lines[0]):]:
        if not ln.startswith("|"):
            break
        block.append([c.strip() for c in ln.strip("|").split("|")])
    return block[0], {row[0]: row[1:] for row in block[2:]}


@pytest.mark.slow
def test_benchmark_smoke_run_reports_every_method_and_case(tmp_path):
    """End to end on the committed crops with every available method (shipped models)."""
    out = tmp_path / "results"
    config = study.StudyConfig(out_dir=out, cases=study.fixture_cases(), fixtures=True)
    results = study.run_study(config, log=lambda *a: None)
    report = (out / "README.md").read_text()
    assert results["failures"] == []
    methods = [m["name"] for m in results["methods"]]
    cases = [c.name for c in study.fixture_cases()]
    assert {"nearest", "trilinear", "bspline"} <= set(methods)
    for heading in ("### NRMSE in the brain mask", "### SSIM in the brain mask", "### PSNR in the brain mask",
                    "### Regression to the training mean", "### Computational profile"):
        header, rows = _table_rows(report, heading)
        if heading == "### Computational profile":   # seconds per case, then the peak memory
            assert header[-1] == "peak RSS (MB)"
            header, rows = header[:-1], {k: v[:-1] for k, v in rows.items()}
        assert header[1:] == [f"`{c}`" for c in cases], heading
        assert set(rows) == {f"`{m}`" for m in methods}, heading
        for m in methods:
            assert all(re.search(r"\d", cell) for cell in rows[f"`{m}`"]), (heading, m)
    header, rows = _table_rows(report, "### Lesions (`pathology`)")
    assert set(rows) == {f"`{m}`" for m in methods}
    for name in results["missing"]:
        assert f"- `{name}`:" in report
    # each learned model's own training simulation is stated (they differ: SRep at a fixed SNR 20)
    for m in results["methods"]:
        if m["training_simulation"]:
            line = next(l for l in report.splitlines() if l.startswith(f"| `{m['name']}` | {m['label']} |"))
            assert study.describe_training_simulation(m["training_simulation"]) in line
            sim = m["training_simulation"]
            snr = f"{sim['snr']:g}" if sim["mode"] == "fixed" else f"{sim['snr'][0]:g}-{sim['snr'][1]:g}"
            assert f"{'fixed' if sim['mode'] == 'fixed' else 'stochastic'}: SNR {snr}" in line
    if "linear" in methods:
        _, rows = _table_rows(report, "### Gain over linear regression")
        assert set(rows) == {f"`{m}`" for m in methods}
    # every number comes from the records: one per case × method, metrics in sane ranges
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["records"]) == len(cases) * len(methods)
    for r in saved["records"]:
        assert 0 < r["nrmse"] < 1 and 0 < r["ssim"] <= 1
    nrmse = study.aggregate(saved["records"], "nrmse")
    for c in cases:  # interpolation beats repeating slices on every case but those that change the contrast
        if c not in ("ood_contrast_change", "ood_lowfield"):
            assert nrmse[(c, "trilinear")][0] < nrmse[(c, "nearest")][0]
    for name, (path, _caption) in saved["figures"].items():
        assert (out / path).stat().st_size < 300_000, path
        assert f"]({path})" in report
    assert {f"case_{c}" for c in cases} <= set(saved["figures"])


def test_benchmark_cli_runs_on_fixtures(tmp_path):
    from IQTEnhanceApps import cli

    out = tmp_path / "cli"
    code = cli.main(["benchmark", "quality", "--fixtures", "--out", str(out), "--methods", "nearest", "trilinear",
                     "--cases", "in_distribution", "pathology", "-q"])
    assert code == 0
    report = (out / "README.md").read_text()
    # the report and figures can be redrawn from the saved results, without a new run
    figure = (out / "case_pathology.png").read_bytes()
    (out / "README.md").unlink()
    (out / "case_pathology.png").unlink()
    assert cli.main(["benchmark", "quality", "--out", str(out), "--report-only"]) == 0
    assert (out / "README.md").read_text() == report
    assert (out / "case_pathology.png").read_bytes() == figure
    _, rows = _table_rows(report, "### NRMSE in the brain mask")
    assert set(rows) == {"`nearest`", "`trilinear`"}
    _, rows = _table_rows(report, "### Lesions (`pathology`)")
    kept = float(rows["`trilinear`"][1])
    assert 20 < kept < 100  # thick slices lose part of a small lesion's contrast, never all of it
    assert cli.main(["benchmark", "quality", "--fixtures", "--out", str(out), "--cases", "nonsense", "-q"]) == 2


def test_claim_check_verdicts_follow_the_numbers():
    """(a) NRMSE vs DL, (b) loss of the gain over trilinear, (c) pull to the mean; ties within margins."""
    def rec(case, method, nrmse, pull):
        return {"case": case, "method": method, "seed": 0, "nrmse": nrmse, "rtm_pull": pull}

    records = [rec("ind", "trilinear", 0.10, 4), rec("ind", "srep", 0.06, 0), rec("ind", "dl", 0.05, 0),
               rec("ood", "trilinear", 0.20, 8), rec("ood", "srep", 0.10, 1), rec("ood", "dl", 0.15, 10),
               rec("ood2", "trilinear", 0.10, 4), rec("ood2", "srep", 0.0502, 0.5), rec("ood2", "dl", 0.05, 0)]
    results = {"records": records, "cases": [{"name": "ind", "group": "in distribution"},
                                             {"name": "ood", "group": "out of distribution"},
                                             {"name": "ood2", "group": "out of distribution"}]}
    rows = {r["case"]: r for r in study.claim_checks(results)["rows"]}
    assert rows["ood"]["a"] == "yes" and rows["ood"]["vs_dl"] == pytest.approx(100 / 3)
    # gains over trilinear: srep 40 -> 50 (drop -10), dl 50 -> 25 (drop 25): srep degrades less
    assert rows["ood"]["drop_x"] == pytest.approx(-10) and rows["ood"]["drop_dl"] == pytest.approx(25)
    assert rows["ood"]["b"] == "yes" and rows["ood"]["c"] == "yes"
    assert rows["ood2"]["a"] == "tie" and rows["ood2"]["c"] == "tie"
    # ood2: srep's gain over trilinear rises 40 -> 49.8 (drop -9.8), dl's stays 50 (drop 0)
    assert rows["ood2"]["b"] == "yes"
    records[-1]["nrmse"] = 0.04  # dl's gain now rises 50 -> 60 (drop -10): within 0.5 points of srep's
    rows = {r["case"]: r for r in study.claim_checks(results)["rows"]}
    assert rows["ood2"]["b"] == "tie" and rows["ood2"]["a"] == "no"
    # replicates: a 33% advantage stays a win while the spread is small, and is a tie within it
    records += [dict(rec("ood", "srep", 0.10, 1), seed=1), dict(rec("ood", "dl", 0.15, 10), seed=1)]
    assert {r["case"]: r for r in study.claim_checks(results)["rows"]}["ood"]["a"] == "yes"
    records[-2]["nrmse"], records[-1]["nrmse"] = 0.16, 0.09   # srep 0.10/0.16, dl 0.15/0.09: sd 0.03 each
    row = {r["case"]: r for r in study.claim_checks(results)["rows"]}["ood"]
    assert row["margin_a"] == pytest.approx(100 * 0.06 / 0.12) and row["a"] == "tie"


def test_training_simulation_is_described_from_the_record():
    stochastic = {"mode": "stochastic", "snr": [10.0, 40.0], "thickness_scale": [0.8, 1.2], "contrast": [1.0, 1.0],
                  "axes": ["i", "j", "k"]}
    assert study.describe_training_simulation(stochastic) == (
        "stochastic: SNR 10-40, thickness 0.8-1.2×, contrast none; axes i,j,k")
    fixed = {"mode": "fixed", "snr": 20.0, "contrast": [0.6, 1.0, 1.4], "thickness_fwhm_hq_voxels": 4.0,
             "axes": ["k"]}
    assert study.describe_training_simulation(fixed) == (
        "fixed: SNR 20, slice FWHM 4 voxels, contrast 0.6/1/1.4; axes k")
    assert study.describe_training_simulation(dict(fixed, snr=None, contrast=[1.0, 1.0, 1.0])) == (
        "fixed: no noise, slice FWHM 4 voxels, contrast none; axes k")
    assert study.describe_training_simulation(None) == "-"


def test_replicates_and_the_papers_srep_row(icbm_t1, tmp_path):
    """Two independently trained joint-formulation SRep models (the paper's own SRep) given for the
    `srep-paper` row: two records per case, told apart by the model's sha256, and the tables show
    mean ± sd over them under the row's own label."""
    from IQTEnhanceApps import cli
    from IQTEnhanceLib import api
    from IQTEnhanceLib.simulate import SimulationParameters

    image, mask = icbm_t1
    paths = []
    for seed in (1, 2):
        path = tmp_path / f"joint{seed}.iqtm"
        api.train("srep", [image], masks=[mask], factor=4, seed=seed, output=path,
                  simulation=SimulationParameters(snr=20.0), formulation="joint", atoms=32, iterations=20,
                  samples=3000, dl_batch=64)
        paths.append(path)
    out = tmp_path / "study"
    code = cli.main(["benchmark", "quality", "--fixtures", "--out", str(out), "--methods", "trilinear", "srep-paper",
                     "--cases", "in_distribution", "--no-figures", "-q"]
                    + [a for p in paths for a in ("--model", f"srep-paper={p}")])
    assert code == 0
    saved = json.loads((out / "results.json").read_text())
    rows = [r for r in saved["records"] if r["method"] == "srep-paper"]
    assert len(rows) == 2 and len({r["model_sha256"] for r in rows}) == 2
    assert sorted(r["replicate"] for r in rows) == [0, 1]
    entry = next(m for m in saved["methods"] if m["name"] == "srep-paper")
    assert entry["label"] == "IQT-SRep (paper)" and entry["engine_method"] == "srep" and entry["replicates"] == 2
    report = (out / "README.md").read_text()
    _, table = _table_rows(report, "### NRMSE in the brain mask")
    assert "±" in table["`srep-paper`"][0]
    mean = float(table["`srep-paper`"][0].strip("*").split("±")[0])
    assert mean == pytest.approx(np.mean([r["nrmse"] for r in rows]), abs=1e-4)
    assert "IQT-SRep (paper)" in report and "1 more replicate(s)" in report


def test_lowfield_case_lowers_the_measured_wm_gm_contrast(colin):
    """The study's low-field case: its LQ has the drawn loss of GM/WM difference (measured on the
    tissue classes of the HQ, noise-free) and is out of every training range."""
    from IQTEnhanceLib.lowfield import class_means
    from IQTEnhanceLib.simulate import apply_contrast

    case = next(c for c in study.fixture_cases() if c.name == "ood_lowfield")
    assert not study.in_training_ranges(case, 4) and case.ood
    image, mask = colin
    brain = mask.array > 0
    params = case.simulation(4, "k", 0, image.array, brain)
    p = tissue_memberships(image.array, brain)
    before = class_means(image.array, p, brain)
    after = class_means(apply_contrast(image.array, brain, params.contrast), p, brain)
    assert (after[2] - after[1]) / (before[2] - before[1]) == pytest.approx(1 - case.lowfield[0], abs=2e-3)
    assert "low-field T1w" in case.describe(4)


def test_rows_learned_from_each_scan(tmp_path):
    """``linear-self`` (and ``srep-self``): learned from each case's LQ scan, no model file; recorded
    as such, and better than trilinear on the fixture case (the learning runs per case)."""
    from IQTEnhanceApps import cli

    out = tmp_path / "self"
    code = cli.main(["benchmark", "quality", "--fixtures", "--out", str(out), "--methods", "trilinear", "linear-self",
                     "--cases", "in_distribution", "--no-figures", "-q"])
    assert code == 0
    saved = json.loads((out / "results.json").read_text())
    entry = next(m for m in saved["methods"] if m["name"] == "linear-self")
    assert entry["engine_method"] == "linear" and entry["model_sha256"] is None
    assert entry["training_data"] == "the case's own LQ scan" and "learned from" in entry["model"]
    _, rows = _table_rows((out / "README.md").read_text(), "### NRMSE in the brain mask")
    assert float(rows["`linear-self`"][0].strip("*")) < float(rows["`trilinear`"][0].strip("*"))
    from IQTEnhanceApps.study.runner import resolve_methods

    runs, missing = resolve_methods(["srep-self"])
    assert not missing and runs[0].model == "self" and runs[0].method == "srep"


def test_one_training_protocol_for_every_learned_row(icbm_t1, tmp_path):
    """Models trained under one protocol (here linear and the paper's SRep, two seeds each, small):
    each records the same protocol, the study takes the folder (two replicates per row, their mean
    ± sd in the tables), says which rows follow the protocol, and refuses a folder that mixes
    protocols."""
    import dataclasses

    from IQTEnhanceApps import cli
    from IQTEnhanceApps.study.protocol import STUDY_PROTOCOL, protocol_models, train_protocol_models
    from IQTEnhanceLib.errors import InputError
    from IQTEnhanceLib.models import load_model

    folder = tmp_path / "protocol"
    tiny_srep = {"atoms": 32, "iterations": 10, "samples": 3000, "dl_batch": 64}
    small = {"linear": {"samples": 3000, "realizations": 1}, "srep-paper": tiny_srep, "srep": tiny_srep}
    paths = train_protocol_models(STUDY_PROTOCOL, ["linear", "srep-paper", "srep"], [0, 1], folder,
                                  volumes=[icbm_t1], options=small, log=lambda *a: None)
    models = {p.name: load_model(p) for p in paths}
    records = [m.training["protocol"] for m in models.values()]
    assert all(r == records[0] for r in records) and records[0]["name"] == STUDY_PROTOCOL.name
    assert records[0]["simulation"]["lowfield_share"] > 0
    # the hybrid codes at the shipped recipe's inference λ; the paper's SRep at its training λ
    assert models["srep_seed0.iqtm"].params["inference_lam"] == 0.1
    assert "inference_lam" not in models["srep-paper_seed0.iqtm"].params
    rows, protocol = protocol_models(folder)
    assert {k: len(v) for k, v in rows.items()} == {"linear": 2, "srep-paper": 2, "srep": 2}
    assert protocol == records[0]

    out = tmp_path / "study"
    code = cli.main(["benchmark", "quality", "--fixtures", "--out", str(out), "--methods", "trilinear", "linear",
                     "srep", "srep-paper", "--cases", "in_distribution", "ood_low_snr", "--no-figures", "-q",
                     "--protocol-models", str(folder)])
    assert code == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["training_protocol"] == protocol
    for row in ("linear", "srep-paper", "srep"):
        entry = next(m for m in saved["methods"] if m["name"] == row)
        assert entry["protocol"] == STUDY_PROTOCOL.name and entry["replicates"] == 2
        assert len({r["model_sha256"] for r in saved["records"] if r["method"] == row}) == 2
        seconds = next(load_model(p) for p in rows[row]).training["train_seconds"]
        assert entry["training_effort"] == f"{seconds:.0f} s"
    report = (out / "README.md").read_text()
    assert f"Training protocol `{STUDY_PROTOCOL.name}`" in report and "±" in report
    # what the ridge part adds, in and out of distribution, from the same records
    from IQTEnhanceApps.study.measures import aggregate, gain, pair_comparison

    pair = pair_comparison(saved, "srep", "srep-paper")
    nrmse = aggregate(saved["records"], "nrmse")
    for case in ("in_distribution", "ood_low_snr"):
        assert pair["per_case"][case]["advantage"] == pytest.approx(gain(nrmse, case, "srep", "srep-paper"))
    assert pair["mean_in_distribution"] == pytest.approx(pair["per_case"]["in_distribution"]["advantage"])
    assert pair["mean_ood"] == pytest.approx(pair["per_case"]["ood_low_snr"]["advantage"])
    assert "### What the ridge part" in report and "**What the ridge part" in report
    assert pair["models"] == (2, 2) and "trained models: 2 and 2:" in report

    other = dataclasses.replace(STUDY_PROTOCOL, name="another")
    train_protocol_models(other, ["linear"], [5], folder, volumes=[icbm_t1], options=small, log=lambda *a: None)
    with pytest.raises(InputError, match="different protocols"):
        protocol_models(folder)


def test_a_dl_worse_than_linear_in_distribution_makes_the_claim_check_uninformative():
    """DL losing to linear regression in distribution is an under-trained network: the headline says
    the wins over it are no evidence, and compares with the shipped DL instead."""
    from IQTEnhanceApps.study.measures import aggregate
    from IQTEnhanceApps.study.report import _undertrained_reference

    cases = [{"name": "ind", "group": "in distribution"}, {"name": "ood", "group": "out of distribution"}]
    values = {("ind", "linear"): 0.060, ("ind", "dl"): 0.075, ("ind", "dl-shipped"): 0.059, ("ind", "srep"): 0.062,
              ("ood", "linear"): 0.110, ("ood", "dl"): 0.170, ("ood", "dl-shipped"): 0.100, ("ood", "srep"): 0.110}
    records = [{"case": c, "method": m, "nrmse": v} for (c, m), v in values.items()]
    results = {"cases": cases, "records": records,
               "methods": [{"name": m} for m in ("linear", "srep", "dl", "dl-shipped")]}
    [line] = _undertrained_reference(results, aggregate(records, "nrmse"))
    assert "not informative" in line and "-25.0% on average" in line
    assert "srep: ood -10.0%" in line            # 0.110 against the shipped DL's 0.100
    values[("ind", "dl")] = 0.058                # a DL that beats linear: nothing to say
    records = [{"case": c, "method": m, "nrmse": v} for (c, m), v in values.items()]
    assert _undertrained_reference(dict(results, records=records), aggregate(records, "nrmse")) == []


def test_shipped_networks_stand_beside_protocol_networks_only():
    """With other models for dl (a protocol run) the shipped DL is a row of its own, ``dl-shipped``;
    without them it would repeat ``dl`` and is left out."""
    from IQTEnhanceApps.study.runner import resolve_methods
    from IQTEnhanceLib.models import default_model_path, load_model

    plain, _ = resolve_methods()
    assert "dl-shipped" not in {r.name for r in plain} and "ddl-shipped" not in {r.name for r in plain}
    given = load_model(default_model_path("dl"))
    runs, _ = resolve_methods(models={"dl": [given]})
    by_name = {r.name: r for r in runs}
    assert "dl-shipped" in by_name and "ddl-shipped" not in by_name
    assert by_name["dl-shipped"].model.name == "dl_t1_x4" and by_name["dl"].model is given


def test_training_effort_of_a_network_says_steps_time_and_held_out_ratio():
    from types import SimpleNamespace

    from IQTEnhanceApps.study.runner import training_effort

    net = SimpleNamespace(training={"steps": 1400, "patches_seen": 5600, "wall_seconds": 476.1, "threads": 1,
                                    "device": "cpu", "heldout_check": {"ratio_to_trilinear": 0.912}})
    assert training_effort(net) == "1400 steps (5600 patches), 8 min on 1 cpu thread(s); held-out NRMSE 0.91× trilinear's"
    assert training_effort(SimpleNamespace(training={})) is None and training_effort(None) is None


def test_lambda_sweep_and_computational_profile(tmp_path):
    """``--lambda-sweep``: an SRep row's model coded at each λ as rows ``ROW@λ`` (default row: the
    paper's SRep), scored on a central slab of the case beside the model's own λ on the same slab,
    kept apart from the whole-case records; ``--lambda-sweep-slab 0`` scores whole cases, and
    ``--resume`` never takes a slab record for a whole-case one.  Every run records its peak
    resident memory, and the profile table gives it per method."""
    from IQTEnhanceApps import cli
    from IQTEnhanceApps.study.runner import lambda_sweep_runs, resolve_methods
    from IQTEnhanceLib.errors import InputError

    out = tmp_path / "sweep"
    args = ["benchmark", "quality", "--fixtures", "--out", str(out), "--methods", "trilinear", "srep",
            "--cases", "in_distribution", "--no-figures", "-q", "--lambda-sweep", "0.02", "0.3",
            "--lambda-sweep-rows", "srep"]
    assert cli.main(args) == 0
    saved = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in saved["records"]} == {"trilinear", "srep"}   # whole-case numbers only
    sweep = saved["lambda_sweep"]
    assert sweep["slab_lq_slices"] == 4 and sweep["own_lam"] == {"srep": pytest.approx(0.1)}
    by_row = {r["method"]: r for r in sweep["records"]}
    assert set(by_row) == {"srep@0.02", "srep@0.1", "srep@0.3"}               # the own λ 0.1 added
    assert all(r["slab"] == [4, 8] and r["slab_coded"] == [2, 10] for r in by_row.values())   # 12 LQ slices
    assert all(0 < r["slab_brain_voxels"] < 0.4 * 48 * 72 * 64 for r in by_row.values())
    assert by_row["srep@0.02"]["nrmse"] != by_row["srep@0.3"]["nrmse"]      # λ changes the codes
    whole = next(r for r in saved["records"] if r["method"] == "srep")
    assert by_row["srep@0.1"]["nrmse"] != whole["nrmse"]                     # another region
    assert all(r["peak_rss_mb"] is None or r["peak_rss_mb"] > 10 for r in saved["records"] + sweep["records"])
    report = (out / "README.md").read_text()
    heading = report.split("### λ sweep of `srep`", 1)[1].split("\n", 1)[0]
    assert "central slab of 4 LQ slices" in heading
    _, table = _table_rows(report, "### λ sweep of `srep`")
    assert list(table) == ["0.02", "0.1 (the model's own)", "0.3"]
    for lam, name in (("0.02", "srep@0.02"), ("0.1 (the model's own)", "srep@0.1"), ("0.3", "srep@0.3")):
        assert float(table[lam][0].strip("*")) == pytest.approx(by_row[name]["nrmse"], abs=1e-4)
    assert sum("**" in v[0] for v in table.values()) == 1
    assert "--lambda-sweep 0.02 0.3 --lambda-sweep-rows srep" in report
    header, profile = _table_rows(report, "### Computational profile")
    assert header[-1] == "peak RSS (MB)" and set(profile) == {"`trilinear`", "`srep`"}
    import sys
    if sys.platform.startswith("linux"):
        assert float(profile["`srep`"][-1]) > 10

    # the whole case instead: the slab records are not taken over; the other rows are kept
    assert cli.main(args + ["--resume", "--lambda-sweep-slab", "0"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert "lambda_sweep" not in again and again["resumed"]
    rows = {r["method"]: r for r in again["records"]}
    assert set(rows) == {"trilinear", "srep", "srep@0.02", "srep@0.3"}
    assert rows["srep"]["seconds"] == whole["seconds"]                        # kept, not run again
    assert rows["srep@0.02"]["nrmse"] != by_row["srep@0.02"]["nrmse"]        # measured on the whole case
    _, table = _table_rows((out / "README.md").read_text(), "### λ sweep of `srep`")
    assert float(table["0.1 (the model's own)"][0].strip("*")) == pytest.approx(rows["srep"]["nrmse"], abs=1e-4)
    assert "--lambda-sweep-slab 0" in again["command"]

    # the default swept row is the paper's SRep (its shipped model when the study has no such row)
    runs = lambda_sweep_runs(resolve_methods(["trilinear"])[0], [0.01])
    assert [r.name for r in runs] == ["srep-paper@0.01"] and runs[0].options["lam"] == 0.01
    assert runs[0].model.params.get("formulation") == "joint"
    assert [r.name for r in lambda_sweep_runs([], [0.01], slab=4)] == ["srep-paper@0.01", "srep-paper@0.05"]
    with pytest.raises(InputError, match="positive"):
        lambda_sweep_runs([], [0.0])
    with pytest.raises(InputError, match="codes srep or srep-paper"):
        lambda_sweep_runs([], [0.1], rows=("linear",))
    with pytest.raises(InputError, match="slab"):
        lambda_sweep_runs([], [0.1], slab=-1)


def test_a_slab_codes_as_inside_the_whole_case():
    """The λ sweep's slab (a crop of the LQ case, normalised by the whole case's intensity scale)
    gives on its scored slices what the whole case gives there."""
    from IQTEnhanceApps.study.runner import case_slab, resolve_methods
    from IQTEnhanceLib import api
    from IQTEnhanceLib.errors import InputError
    from IQTEnhanceLib.normalize import intensity_scale

    data = study.prepare_case(_case("in_distribution"), LOADER)
    slab = case_slab(data.mask, data.lq.array.shape, 4, "k", 4)
    assert (slab.start, slab.stop, slab.coded) == (4, 8, (2, 10))
    crop = slab.lq_input(data.lq)
    np.testing.assert_array_equal(crop.array, data.lq.array[2:10])
    assert np.allclose(crop.physical_point((0, 0, 0)), data.lq.physical_point((0, 0, 2)))
    scale = intensity_scale(data.lq.array)
    paper = resolve_methods(["srep-paper"])[0][0].model     # the default swept row
    whole = api.enhance(data.lq, "srep", model=paper, device="cpu").volume
    part = api.enhance(crop, "srep", model=paper, device="cpu", intensity_scale=scale)
    assert part.info["intensity_scale"] == scale
    assert np.allclose(part.volume.physical_point((0, 0, 0)), whole.physical_point((0, 0, 8)))
    inside = slab.of_case(data.mask)
    a = slab.of_output(part.volume.array)[inside]
    b = slab.of_case(whole.array)[inside]
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
    assert case_slab(data.mask, data.lq.array.shape, 4, "k", 0).coded == (0, 12)   # 0: the whole case
    with pytest.raises(InputError, match="positive"):
        api.enhance(crop, "trilinear", intensity_scale=0)


def test_the_headline_says_what_the_design_can_tell():
    """Learned rows trained differently (or one model each): the headline says the claim cannot be
    decided from few-percent differences; all under one protocol with replicates: it says so."""
    from IQTEnhanceApps.study.report import _design_caveat

    mixed = {"methods": [{"name": "srep", "protocol": None, "replicates": 1},
                         {"name": "dl", "protocol": None, "replicates": 1}]}
    [line] = _design_caveat(mixed)
    assert "cannot tell" in line and "one model per row" in line and "--protocol-models" in line
    same = {"methods": [{"name": n, "protocol": "iqt-study-1", "replicates": 3} for n in ("srep", "ddl", "dl")]}
    [line] = _design_caveat(same)
    assert "`iqt-study-1`" in line and "at least 3 trained models each" in line
    one_network = {"methods": [{"name": n, "protocol": "iqt-study-1", "replicates": 3 if n == "srep" else 1}
                               for n in ("srep", "ddl", "dl")]}
    [line] = _design_caveat(one_network)
    assert "ddl, dl had one trained model each" in line and "training variance is unknown" in line
    assert _design_caveat({"methods": [{"name": "linear"}]}) == []


def test_a_study_resumes_and_extends_without_rerunning_what_it_has(tmp_path, monkeypatch, capsys):
    """``--resume``: a run cut short keeps the cases it finished (a checkpoint after every case, no
    report); resuming runs only the missing records; adding a row runs only that row, and adding the
    pathology case reruns its lesion-free twin's outputs without recording them again; a run under
    another set-up is refused."""
    from IQTEnhanceApps import cli
    from IQTEnhanceApps.cli.main import EXIT_INTERRUPTED
    from IQTEnhanceApps.study import runner
    from IQTEnhanceLib.errors import CancelledError, InputError

    out = tmp_path / "resume"
    base = ["benchmark", "quality", "--fixtures", "--out", str(out), "-q", "--cases", "in_distribution", "ood_low_snr"]
    calls = []
    real_enhance = runner.StudyRun.enhance

    def counting(self, run, case, data, seed, *where):
        calls.append((case.name, run.name))
        if case.name == "ood_low_snr" and stop_at_low_snr:
            raise CancelledError("killed")          # the session ends in the middle of the second case
        return real_enhance(self, run, case, data, seed, *where)

    monkeypatch.setattr(runner.StudyRun, "enhance", counting)
    stop_at_low_snr = True
    assert cli.main(base + ["--methods", "nearest", "trilinear"]) == EXIT_INTERRUPTED
    assert "--resume" in capsys.readouterr().err
    assert not (out / "results.json").exists() and not (out / "README.md").exists()   # no half-made report
    partial = json.loads((out / runner.CHECKPOINT).read_text())
    assert {(r["case"], r["method"]) for r in partial["records"]} == {
        ("in_distribution", "nearest"), ("in_distribution", "trilinear")}

    stop_at_low_snr, calls[:] = False, []
    assert cli.main(base + ["--methods", "nearest", "trilinear", "--resume"]) == 0
    assert sorted(calls) == [("ood_low_snr", "nearest"), ("ood_low_snr", "trilinear")]
    resumed = json.loads((out / "results.json").read_text())
    assert not (out / runner.CHECKPOINT).exists() and len(resumed["records"]) == 4
    assert resumed["seconds"] > partial["seconds"] and resumed["resumed"]
    kept = {(r["case"], r["method"]): r["nrmse"] for r in resumed["records"]}
    assert kept[("in_distribution", "nearest")] == next(
        r["nrmse"] for r in partial["records"] if r["method"] == "nearest")

    calls[:] = []      # one more row and the pathology case
    assert cli.main(base + ["pathology", "--methods", "nearest", "trilinear", "bspline", "--resume"]) == 0
    assert sorted(calls) == sorted([("in_distribution", "nearest"), ("in_distribution", "trilinear"),  # the twin
                                    ("in_distribution", "bspline"), ("ood_low_snr", "bspline"),
                                    ("pathology", "nearest"), ("pathology", "trilinear"), ("pathology", "bspline")])
    extended = json.loads((out / "results.json").read_text())
    assert len(extended["records"]) == 9
    assert {(r["case"], r["method"]): r["nrmse"] for r in extended["records"]
            if r["case"] != "pathology" and r["method"] != "bspline"} == kept
    report = (out / "README.md").read_text()
    _, rows = _table_rows(report, "### NRMSE in the brain mask")
    assert set(rows) == {"`nearest`", "`trilinear`", "`bspline`"} and all(v != "-" for v in rows["`bspline`"])
    _, lesions = _table_rows(report, "### Lesions (`pathology`)")
    assert 20 < float(lesions["`bspline`"][1]) < 100   # measured against its twin's output
    reproduce = re.search(r"Reproduce: `([^`]*)`", report).group(1)
    assert "--methods nearest trilinear bspline" in reproduce and "--resume" not in reproduce
    assert "over runs extended with `--resume`" in report

    calls[:] = []      # nothing left to do: nothing runs
    assert cli.main(base + ["pathology", "--methods", "nearest", "trilinear", "bspline", "--resume"]) == 0
    assert calls == []
    results = json.loads((out / "results.json").read_text())
    results["factor"] = 3                                  # measured at another factor: not comparable
    (out / "results.json").write_text(json.dumps(results))
    config = runner.StudyConfig(out_dir=out, cases=study.fixture_cases()[:1], fixtures=True, resume=True)
    with pytest.raises(InputError, match="factor 3 there, 4 here"):
        runner.previous_results(config)


def test_resuming_without_the_earlier_figure_slices_says_the_figures_lose_those_rows(tmp_path, capsys):
    from IQTEnhanceApps import cli
    from IQTEnhanceApps.study import runner

    out = tmp_path / "resume"
    base = ["benchmark", "quality", "--fixtures", "--out", str(out), "--cases", "in_distribution"]
    assert cli.main(base + ["-q", "--methods", "nearest"]) == 0
    capsys.readouterr()
    assert cli.main(base + ["--methods", "nearest", "trilinear", "--resume"]) == 0
    assert "is missing" not in capsys.readouterr().out          # the slices are there: nothing to say
    (out / runner.FIGURE_SLICES).unlink()
    assert cli.main(base + ["--methods", "nearest", "trilinear", "bspline", "--resume"]) == 0
    said = capsys.readouterr().out
    assert f"{runner.FIGURE_SLICES} is missing" in said and "only the rows run now" in said

def test_full_is_the_whole_study_and_the_report_names_the_command_that_reproduces_it(monkeypatch, tmp_path):
    """``--full``: every case (the thicker-slice one too) and the λ sweep, one noise seed; the
    recorded command names every choice that changes what is measured, never --out or --resume."""
    from IQTEnhanceApps import cli
    from IQTEnhanceApps.study import command as study_command
    from IQTEnhanceApps.common.runtime import available_cores
    from IQTEnhanceApps.study.runner import FULL_LAMBDA_SWEEP

    seen = {}

    def fake_run(config, **kwargs):
        seen["config"] = config
        return {"seconds": 1.0, "missing": {}}

    monkeypatch.setattr(study_command, "run_study", fake_run)
    assert cli.main(["benchmark", "quality", "--full", "--out", str(tmp_path), "-q"]) == 0
    config = seen["config"]
    assert "ood_thick" in [c.name for c in config.cases] and config.seeds == (0,)
    assert config.lambda_sweep == FULL_LAMBDA_SWEEP and config.lambda_sweep_rows == ("srep-paper",)
    assert config.lambda_sweep_slab == 4 and config.jobs == available_cores()   # whole cases in parallel
    assert config.command == "iqt-enhance benchmark quality --full"
    assert cli.main(["benchmark", "quality", "--out", str(tmp_path), "--resume", "-q", "--methods", "linear", "srep",
                     "--cases", "in_distribution", "--seeds", "1", "2", "--model", "srep=/x/m.iqtm",
                     "--lambda-sweep", "0.02", "--lambda-sweep-rows", "srep"]) == 0
    config = seen["config"]
    assert config.resume and config.lambda_sweep == (0.02,)
    assert cli.main(["benchmark", "quality", "--fixtures", "--out", str(tmp_path), "-q"]) == 0
    assert seen["config"].jobs == 1                                  # crops: seconds per case, one process
    assert config.command == ("iqt-enhance benchmark quality --model srep=FILE --methods linear srep "
                              "--cases in_distribution --seeds 1 2 --lambda-sweep 0.02 --lambda-sweep-rows srep")


def test_worker_processes_measure_what_one_process_measures(tmp_path):
    """``--jobs 2``: the cases run in two worker processes (the pathology case with its twin) and
    give the records, lesion rows and report of a one-process run; it resumes like one."""
    from IQTEnhanceApps import cli

    base = ["benchmark", "quality", "--fixtures", "-q", "--methods", "nearest", "trilinear", "linear",
            "--cases", "in_distribution", "ood_low_snr", "pathology", "--no-figures"]
    assert cli.main(base + ["--out", str(tmp_path / "one")]) == 0
    assert cli.main(base + ["--out", str(tmp_path / "two"), "--jobs", "2"]) == 0
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))

    def by_key(results, field):
        return {(r["case"], r["method"]): r[field] for r in results["records"]}

    assert by_key(two, "nrmse").keys() == by_key(one, "nrmse").keys() and len(two["records"]) == 9
    for key, value in by_key(one, "nrmse").items():
        assert by_key(two, "nrmse")[key] == pytest.approx(value, rel=1e-5)
    kept = {(r["method"], r["id"]): r["kept"] for r in one["lesions"]}
    assert {(r["method"], r["id"]): r["kept"] for r in two["lesions"]} == pytest.approx(kept, rel=1e-5)
    assert [c["name"] for c in two["cases"]] == [c["name"] for c in one["cases"]]
    # one more row, in workers, on top of the records there
    assert cli.main(base[:5] + ["nearest", "trilinear", "linear", "bspline"] + base[8:]
                    + ["--out", str(tmp_path / "two"), "--jobs", "2", "--resume"]) == 0
    extended = json.loads((tmp_path / "two" / "results.json").read_text())
    assert len(extended["records"]) == 12 and by_key(extended, "nrmse").items() >= by_key(two, "nrmse").items()
    assert cli.main(base + ["--out", str(tmp_path / "bad"), "--jobs", "0"]) == 2


def test_seconds_from_runs_with_different_thread_counts_are_flagged():
    from IQTEnhanceApps.study.report import _threads_note

    same = {"records": [{"threads": 2}, {"threads": 2}]}
    mixed = {"records": [{"threads": 1}, {"threads": 2}, {}]}
    assert _threads_note(same) == ""
    assert "(1, 2, and unrecorded ones" in _threads_note(mixed)
