"""Cohort batch on Dask: `iqt-enhance batch` and IQTEnhanceApps.batch.run_batch.

Real data: LQ volumes simulated from the committed Colin27 / ICBM crops (×4 along k, different
noise seeds), real Dask LocalClusters with worker *processes*, real model files trained here.
One cluster is shared by the module (starting one costs ~5 s on the busy 2-core machine); the
worker-death test starts its own through run_batch, as the command does.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from IQTEnhanceApps import batch
from IQTEnhanceLib import api
from IQTEnhanceApps.cli import main as cli_main
from IQTEnhanceLib.data import load_fixture
from IQTEnhanceLib.errors import InputError
from IQTEnhanceLib.methods import get_method
from IQTEnhanceLib.metrics import evaluate
from IQTEnhanceLib.models import file_checksum
from IQTEnhanceLib.simulate import SimulationParameters, simulate
from IQTEnhanceLib.volume import read_volume, write_volume

GOOD = [("colin27_t1", 11), ("icbm2009c_t1", 12), ("icbm2009c_t2", 13), ("colin27_t1", 14)]
# Learned methods in the order we prefer them for a tiny test model (cheapest to train first).
LEARNED = ("linear", "forest", "srep", "ddl", "dl")
# Training options that make a model small and quick, for whichever of them a method has.
TINY_TRAINING = {"samples": 4000, "n_samples": 4000, "patches": 4000, "n_patches": 4000, "pairs": 4000,
                 "atoms": 32, "n_atoms": 32, "iterations": 2, "epochs": 1, "steps": 20, "trees": 4,
                 "n_trees": 4, "n_estimators": 4, "max_depth": 6, "depth": 6, "realizations": 1, "minutes": 0.2}


def learned_method():
    """(name, None) of the cheapest learned method installed, or (None, why not)."""
    for name in LEARNED:
        try:
            spec = get_method(name)
        except (InputError, ImportError):
            continue
        if spec.train is not None and spec.needs_model:
            return name, None
    return None, f"no learned method is installed yet (looked for {', '.join(LEARNED)})"


def tiny_options(method: str) -> dict:
    spec = get_method(method)
    options = {}
    for option in spec.train_options:
        if option.name in TINY_TRAINING and isinstance(TINY_TRAINING[option.name], option.type):
            value = TINY_TRAINING[option.name]
            if option.choices is None or value in option.choices:
                options[option.name] = value
    return options


def single_threaded():
    """The thread count the batch workers use (1), for bit-for-bit comparisons in this process."""
    from threadpoolctl import threadpool_limits

    limits = threadpool_limits(limits=1)
    torch_threads = None
    try:
        import torch

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
    except ImportError:
        pass
    return limits, torch_threads


def restore_threads(state):
    limits, torch_threads = state
    limits.restore_original_limits()
    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)


def expected_output(lq_path, method, model=None):
    state = single_threaded()
    try:
        return api.enhance(read_volume(lq_path), method, model=model, device="cpu").volume
    finally:
        restore_threads(state)


def files_under(folder: Path) -> list:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """4 real LQ volumes (+ their HQ references and masks), 3 bad inputs and a CSV listing all."""
    root = tmp_path_factory.mktemp("cohort")
    (root / "lq").mkdir()
    (root / "ref").mkdir()
    good = []
    for name, seed in GOOD:
        hq, mask = load_fixture(name)
        lq, _ = simulate(hq, SimulationParameters(factor=4, axis="k", snr=20.0, seed=seed), mask=mask)
        lq_path = write_volume(lq, root / "lq" / f"{name}_s{seed}.nii.gz")
        ref_path = write_volume(hq, root / "ref" / f"{name}.nii.gz")
        mask_path = write_volume(mask, root / "ref" / f"{name}_mask.nii.gz", dtype=np.uint8)
        good.append({"name": lq_path.name[: -len(".nii.gz")], "input": lq_path, "reference": ref_path,
                     "mask": mask_path})
    bad = {}
    bad["unreadable"] = root / "bad" / "unreadable.nii.gz"
    bad["unreadable"].parent.mkdir()
    bad["unreadable"].write_bytes(b"this is not an image\n" * 20)
    bad["flat2d"] = root / "bad" / "flat2d.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((40, 40)).astype(np.float32)),
                    str(bad["flat2d"]))
    lq = read_volume(good[0]["input"])
    array = lq.array.copy()
    array[3, 10:20, 10:20] = np.nan
    bad["nan"] = root / "bad" / "nan.nrrd"   # NRRD keeps NaNs (SimpleITK reads NIfTI NaNs back as 0)
    sitk.WriteImage(lq.with_array(array).to_sitk(), str(bad["nan"]))
    return {"root": root, "good": good, "bad": bad}


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    cluster = batch.start_local_cluster(2, 1, dashboard=":0")   # as the command starts it
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny models of the cheapest learned method (different seeds), trained on a fixture crop."""
    method, why = learned_method()
    if method is None:
        return {"method": None, "why": why}
    root = tmp_path_factory.mktemp("models")
    hq, mask = load_fixture("icbm2009c_t1")
    paths = []
    for seed in (0, 1):
        path = root / f"{method}_seed{seed}.iqtm"
        api.train(method, [hq], factor=4, masks=[mask], output=path, seed=seed, data_names=["icbm2009c_t1 crop"],
                  **tiny_options(method))
        paths.append(path)
    corrupt = root / "corrupt.iqtm"
    data = paths[0].read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    return {"method": method, "paths": paths, "corrupt": corrupt}


def write_csv(path: Path, rows: list) -> Path:
    columns = ["input", "reference", "mask", "model"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: os.path.relpath(row[k], path.parent) if row.get(k) else "" for k in columns})
    return path


def quiet(_message):
    pass


# -- the main run -------------------------------------------------------------------------------
def test_cohort_matches_single_volume_enhance_and_reports_every_volume(cohort, client, models, tmp_path):
    method = models["method"] or "trilinear"
    model = models["paths"][0] if models["method"] else None
    rows = [dict(g) for g in cohort["good"]] + [{"input": p} for p in cohort["bad"].values()]
    if models["method"]:   # a good volume paired with a corrupt model file: a "wrong model" row
        rows.append({"input": cohort["good"][1]["input"], "model": models["corrupt"]})
    table = write_csv(cohort["root"] / f"cohort_{method}.csv", rows)
    out = tmp_path / "out"

    report = batch.run_batch(table, out, method, model=model, client=client, progress=False, log=quiet)

    assert len(report.rows) == len(rows)
    assert [r["input"] for r in report.rows] == [str(r["input"]) for r in rows]   # the CSV's order
    by_name = {r["name"]: r for r in report.rows}
    assert len(by_name) == len(rows)   # names are unique even for an input listed twice
    # the bad inputs: failed with their own one-sentence error, the others unaffected
    assert by_name["unreadable"]["status"] == "failed" and "not a readable image" in by_name["unreadable"]["error"]
    assert by_name["flat2d"]["status"] == "failed" and "2-D" in by_name["flat2d"]["error"]
    assert by_name["nan"]["status"] == "failed" and "NaN" in by_name["nan"]["error"]
    if models["method"]:
        wrong = report.rows[-1]
        assert wrong["status"] == "failed" and "corrupt" in wrong["error"], wrong
        assert wrong["output"] == "" and not list(out.glob(f"{wrong['name']}_*"))
    for bad in ("unreadable", "flat2d", "nan"):
        assert not (out / f"{bad}_{method}.nii.gz").exists()

    loads = {}
    for g, row in zip(cohort["good"], report.rows):
        assert row["status"] == "done", row
        assert row["device"] == "cpu" and row["seconds"] > 0
        written = read_volume(row["output"])
        expected = expected_output(g["input"], method, model)
        # same device and the same thread count (1) as the workers: bit for bit
        assert written.same_grid(expected)
        assert np.array_equal(written.array, expected.array), \
            f"{g['name']}: max diff {np.abs(written.array - expected.array).max()}"
        metrics = evaluate(expected, read_volume(g["reference"]), read_volume(g["mask"], allow_label_map=True))
        for key in ("nrmse", "psnr", "ssim"):
            assert row[key] == pytest.approx(metrics[key], rel=1e-9)
        sidecar = json.loads(Path(row["output"]).with_name(f"{row['name']}_{method}.json").read_text())
        assert sidecar["provenance"]["input_sha256"] == file_checksum(g["input"])
        assert sidecar["provenance"]["model_sha256"] == (file_checksum(model) if model else None)
        if model:
            loads.setdefault(row["worker"], []).append(row["model_loads"])
    if model:   # the model is loaded once per worker, not once per volume
        assert loads and all(max(n) == 1 for n in loads.values()), loads

    # the report lists all, in the CSV's order, in both formats
    with open(out / "batch.csv") as f:
        table_rows = list(csv.DictReader(f))
    assert [r["name"] for r in table_rows] == [r["name"] for r in report.rows]
    assert [r["status"] for r in table_rows] == [r["status"] for r in report.rows]
    saved = json.loads((out / "batch.json").read_text())
    assert saved["counts"] == {"done": 4, "skipped": 0, "failed": len(rows) - 4, "cancelled": 0}
    assert [v["name"] for v in saved["volumes"]] == [r["name"] for r in report.rows]
    assert not [n for n in files_under(out) if ".partial" in n or n.startswith(".")]


# -- resume -------------------------------------------------------------------------------------
def test_rerun_computes_nothing_and_a_new_model_recomputes_everything(cohort, client, models, tmp_path):
    if models["method"] is None:
        pytest.skip(models["why"])
    method, (model_a, model_b) = models["method"], models["paths"]
    folder = tmp_path / "lq"
    folder.mkdir()
    for g in cohort["good"]:
        shutil.copy(g["input"], folder / Path(g["input"]).name)
    out = tmp_path / "out"
    run = lambda model, **kw: batch.run_batch(folder, out, method, model=model, client=client,  # noqa: E731
                                              progress=False, log=quiet, **kw)
    first = run(model_a)
    assert [r["status"] for r in first.rows] == ["done"] * 4
    outputs = sorted(out.glob(f"*_{method}.nii.gz"))
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in outputs}

    again = run(model_a)   # nothing changed: nothing computed, nothing rewritten
    assert [r["status"] for r in again.rows] == ["skipped"] * 4
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in outputs} == stamps

    # an option given at its default value is the same run
    defaults = {o.name: o.default for o in get_method(method).options}
    if defaults:
        assert [r["status"] for r in run(model_a, options=defaults).rows] == ["skipped"] * 4

    # one output lost: only that one is redone
    outputs[2].unlink()
    partial = run(model_a)
    assert sorted(r["status"] for r in partial.rows) == ["done", "skipped", "skipped", "skipped"]
    assert {p: p.stat().st_mtime_ns for p in outputs if p != outputs[2]} == \
        {p: s[0] for p, s in stamps.items() if p != outputs[2]}

    changed = run(model_b)  # another model: every volume is redone, with that model
    assert [r["status"] for r in changed.rows] == ["done"] * 4
    for row in changed.rows:
        expected = expected_output(row["input"], method, model_b)
        assert np.array_equal(read_volume(row["output"]).array, expected.array)
    assert any(not np.array_equal(read_volume(p).array, read_volume_bytes(stamps[p][1], tmp_path).array)
               for p in outputs if p != outputs[2])


def read_volume_bytes(data: bytes, tmp_path: Path):
    path = tmp_path / "previous.nii.gz"
    path.write_bytes(data)
    return read_volume(path)


# -- a worker dies mid-run ----------------------------------------------------------------------
def _worker_processes(exclude: set) -> list:
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid not in exclude and "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.mark.slow
def test_worker_killed_mid_run_loses_nothing_and_rerun_does_only_the_missing(cohort, client, tmp_path):
    """The batch's own LocalCluster (processes, as the command starts it) with --retries 0, so the
    volumes of the killed worker are reported failed instead of retried; the rerun does them."""
    folder = tmp_path / "lq"
    folder.mkdir()
    inputs = []
    for copy in range(3):
        for g in cohort["good"]:
            inputs.append(shutil.copy(g["input"], folder / f"c{copy}_{Path(g['input']).name}"))
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".old_trilinear.nii.gz.partial-4242.nii.gz"   # left by an earlier run killed mid-write
    stale.write_bytes(b"half a volume")

    before = {p.pid for p in _worker_processes(set())}
    result, seen = {}, set()

    def target():
        result["report"] = batch.run_batch(folder, out, "trilinear", workers=2, threads_per_worker=1, retries=0,
                                           progress=False, log=quiet)

    thread = threading.Thread(target=target)
    thread.start()
    killed, workers = None, []
    deadline = time.monotonic() + 120
    while thread.is_alive() and time.monotonic() < deadline:
        if len(workers) < 2:   # known before the first volume ends, so the kill comes within ~10 ms
            workers = _worker_processes(before)
        seen.update(p.name for p in out.iterdir() if not p.name.startswith("."))
        if killed is None and workers and list(out.glob("*_trilinear.json")):
            killed = workers[0].pid
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.005)
    thread.join(timeout=60)
    assert killed is not None, "the run ended before a worker could be killed"
    report = result["report"]
    # A volume the killed worker had finished is recomputed by Dask elsewhere (its result lived on
    # that worker) and then finds its output and sidecar complete: skipped, not redone.
    # A volume whose worker died after writing it and its sidecar is verified and reported done.
    failed = [r for r in report.rows if r["status"] == "failed"]
    recovered = [r for r in report.rows if "worker died after writing" in r["warnings"]]
    assert all(r["status"] in ("done", "skipped", "failed") for r in report.rows) and len(report.rows) == len(inputs)
    assert failed, "killing a busy worker with --retries 0 must fail the volume(s) it had not written"
    for row in recovered:
        assert row["status"] == "done" and (out / f"{row['name']}_trilinear.json").exists()
    for row in failed:
        assert "worker" in row["error"] and "died" in row["error"]
        assert not (out / f"{row['name']}_trilinear.json").exists()
    # nothing half-made: every visible output name is a whole volume, no temporary file is left
    assert not [p for p in out.iterdir() if ".partial" in p.name]
    assert all(n.endswith((".nii.gz", ".json", ".csv")) for n in seen)

    rerun = batch.run_batch(folder, out, "trilinear", client=client, progress=False, log=quiet)
    again = {r["name"]: r["status"] for r in rerun.rows}
    assert {r["name"] for r in failed} == {n for n, s in again.items() if s == "done"}
    assert all(s in ("done", "skipped") for s in again.values())
    for row in rerun.rows:
        expected = expected_output(row["input"], "trilinear")
        assert np.array_equal(read_volume(row["output"]).array, expected.array)


# -- command line -------------------------------------------------------------------------------
def test_command_line_runs_on_a_running_scheduler_and_exits_3_on_failures(cohort, client, tmp_path, capsys):
    folder = tmp_path / "lq"
    folder.mkdir()
    for g in cohort["good"][:2]:
        shutil.copy(g["input"], folder / Path(g["input"]).name)
    out = tmp_path / "out"
    args = ["batch", str(folder), str(out), "--method", "trilinear", "--scheduler", client.scheduler.address, "-q"]
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert "2 volume(s)" in text and "2 done" in text
    assert len(list(out.glob("*_trilinear.nii.gz"))) == 2

    shutil.copy(cohort["bad"]["unreadable"], folder / "unreadable.nii.gz")
    assert cli_main(args) == batch.EXIT_SOME_FAILED
    captured = capsys.readouterr()
    assert "2 skipped" in captured.out and "1 failed" in captured.out
    assert "unreadable" in captured.err and "not a readable image" in captured.err


@pytest.mark.parametrize("extra, message", [
    (["-O", "no_such_option=1"], "has no option"),
    (["--stride-inplane", "2"], "has no option(s) stride_inplane"),   # another method's option
    (["--cluster-config", "x.yaml"], "--cluster-config needs --cluster"),
    (["--cluster", "slurm"], "needs --cluster-config"),
], ids=["unknown-option", "other-methods-option", "config-without-cluster", "cluster-without-config"])
def test_command_line_refuses_bad_arguments_before_starting(cohort, tmp_path, capsys, extra, message):
    folder = Path(cohort["good"][0]["input"]).parent
    code = cli_main(["batch", str(folder), str(tmp_path / "out"), "--method", "trilinear", "-q", *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_wrong_model_for_the_method_fails_before_any_worker_starts(cohort, models, tmp_path):
    if models["method"] is None:
        pytest.skip(models["why"])
    with pytest.raises(InputError, match="takes no model"):
        batch.run_batch(cohort["root"] / "lq", tmp_path / "out", "trilinear", model=models["paths"][0],
                        progress=False, log=quiet)
    with pytest.raises(Exception, match="corrupt"):
        batch.run_batch(cohort["root"] / "lq", tmp_path / "out", models["method"], model=models["corrupt"],
                        progress=False, log=quiet)


# -- inputs, names, cluster settings ------------------------------------------------------------
def test_inputs_from_folder_glob_and_csv_and_output_names(tmp_path):
    lq, _ = load_fixture("colin27_t1")
    for sub in ("sub-01", "sub-02"):
        write_volume(lq, tmp_path / "bids" / sub / "anat" / "T1w.nii.gz")
    write_volume(lq, tmp_path / "flat" / "a.nii.gz")
    write_volume(lq, tmp_path / "flat" / "b.nrrd")
    (tmp_path / "flat" / "notes.txt").write_text("not a volume")
    (tmp_path / "flat" / ".hidden.nii.gz").write_bytes(b"")

    rows = batch.collect_inputs(tmp_path / "flat", tmp_path / "flat" / "out")
    assert [Path(r["input"]).name for r in rows] == ["a.nii.gz", "b.nrrd"]
    rows = batch.collect_inputs(str(tmp_path / "bids" / "*" / "anat" / "*.nii.gz"))
    jobs = batch.plan_jobs(rows, tmp_path / "out", "linear")
    assert [Path(j.output).name for j in jobs] == ["sub-01_anat_T1w_linear.nii.gz", "sub-02_anat_T1w_linear.nii.gz"]
    assert [Path(j.sidecar).name for j in jobs] == ["sub-01_anat_T1w_linear.json", "sub-02_anat_T1w_linear.json"]

    table = tmp_path / "flat" / "cohort.csv"
    table.write_text("Input,reference\na.nii.gz,b.nrrd\n,\nb.nrrd,\n")
    rows = batch.collect_inputs(table)
    assert [(Path(r["input"]).name, r["reference"] and Path(r["reference"]).name) for r in rows] == \
        [("a.nii.gz", "b.nrrd"), ("b.nrrd", None)]
    # the outputs of an earlier run inside the input folder are not inputs
    write_volume(lq, tmp_path / "flat" / "out" / "a_linear.nii.gz")
    assert len(batch.collect_inputs(str(tmp_path / "flat" / "**" / "*.nii.gz"), tmp_path / "flat" / "out")) == 1

    (tmp_path / "bad.csv").write_text("path\nx.nii.gz\n")
    with pytest.raises(InputError, match="'input' column"):
        batch.collect_inputs(tmp_path / "bad.csv")
    with pytest.raises(InputError, match="no volume"):
        batch.collect_inputs(str(tmp_path / "flat" / "*.mha"))
    with pytest.raises(InputError, match="no such file"):
        batch.collect_inputs(tmp_path / "missing_folder")


def test_local_cluster_size_never_oversubscribes_the_cores():
    assert batch.local_cluster_size(cores=2, memory=24 << 30) == (2, 1)
    assert batch.local_cluster_size(cores=16, memory=8 << 30) == (4, 1)     # 2 GiB per worker
    assert batch.local_cluster_size(1, cores=2) == (1, 2)
    assert batch.local_cluster_size(None, 4, cores=16) == (4, 4)
    assert batch.local_cluster_size(3, 2, cores=2) == (3, 2)                 # asked for: kept (a warning is logged)
    with pytest.raises(InputError):
        batch.local_cluster_size(0, cores=2)


@pytest.mark.parametrize("example, threads, expected", [
    (batch.EXAMPLE_SLURM_CONFIG, 2, ["--cpus-per-task=8", "-p normal", "-A my-lab", "--nworkers 4"]),
    (batch.EXAMPLE_SLURM_GPU_CONFIG, 8, ["--gres=gpu:1", "-p gpu"]),
], ids=["cpu-nodes", "gpu-nodes"])
def test_readme_cluster_configs_make_the_job_scripts_we_document(tmp_path, example, threads, expected):
    import yaml

    path = tmp_path / "cluster.yaml"
    path.write_text(example)
    config = batch.read_cluster_config(path)
    config["scheduler_options"] = {"host": "127.0.0.1"}   # no job is submitted; keep the scheduler local
    cluster, got = batch.make_jobqueue_cluster("slurm", config, scale=False)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert got == threads
    assert script.rstrip().endswith("--nthreads 1")        # one volume at a time per worker ...
    assert f"export OMP_NUM_THREADS={threads}" in script   # ... with cores/processes threads
    for text in expected:
        assert text in script
    assert yaml.safe_load(example)   # the README's text is valid YAML as printed
    with pytest.raises(InputError, match="cores"):
        batch.make_jobqueue_cluster("slurm", {"queue": "x"}, scale=False)


def test_one_batch_per_output_folder(tmp_path):
    with batch.runner._OutdirLock(tmp_path):
        with pytest.raises(InputError, match="another batch"):
            with batch.runner._OutdirLock(tmp_path):
                pass
    assert not (tmp_path / batch.LOCK_NAME).exists()
    # a lock left by a run killed on this machine is taken over
    (tmp_path / batch.LOCK_NAME).write_text(json.dumps({"host": os.uname().nodename, "pid": 2 ** 22 + 7}))
    with batch.runner._OutdirLock(tmp_path):
        pass


# -- reliability: truncated inputs, changed outputs, dashboard, missing packages ---------------------
def test_truncated_input_fails_its_row_and_an_output_whose_bytes_changed_is_redone(cohort, client, tmp_path,
                                                                                   capsys):
    folder = tmp_path / "lq"
    folder.mkdir()
    good = Path(cohort["good"][0]["input"])
    shutil.copy(good, folder / good.name)
    data = good.read_bytes()
    (folder / "cut.nii.gz").write_bytes(data[: len(data) * 3 // 4])
    out = tmp_path / "out"
    args = ["batch", str(folder), str(out), "--method", "trilinear", "--scheduler", client.scheduler.address, "-q"]
    assert cli_main(args) == batch.EXIT_SOME_FAILED
    err = capsys.readouterr().err
    assert "cut" in err and "truncated" in err
    rows = {r["name"]: r for r in csv.DictReader((out / "batch.csv").open())}
    assert rows["cut"]["status"] == "failed" and "truncated" in rows["cut"]["error"]
    assert not (out / "cut_trilinear.nii.gz").exists()

    output = out / f"{good.name[:-len('.nii.gz')]}_trilinear.nii.gz"
    sidecar = json.loads(output.with_name(output.name[:-len(".nii.gz")] + ".json").read_text())
    assert sidecar["output_sha256"] == file_checksum(output) and sidecar["output_bytes"] == output.stat().st_size
    expected = output.read_bytes()
    damaged = bytearray(expected)
    damaged[len(damaged) // 2] ^= 0xFF            # same size, other bytes
    output.write_bytes(bytes(damaged))
    (folder / "cut.nii.gz").unlink()
    assert cli_main(args) == 0
    assert "1 done" in capsys.readouterr().out     # redone, not skipped
    assert output.read_bytes() == expected
    assert cli_main(args) == 0
    assert "1 skipped" in capsys.readouterr().out  # and now trusted again


def test_the_dashboard_listens_on_loopback_only_by_default():
    psutil = pytest.importorskip("psutil")
    cluster = batch.start_local_cluster(1, 1)
    try:
        port = cluster.scheduler.http_server.port
        listening = [c.laddr.ip for c in psutil.Process().net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        assert listening and set(listening) <= {"127.0.0.1"}, listening
    finally:
        cluster.close()


@pytest.mark.parametrize("missing, extra, install", [
    ("distributed", [], "pip install 'dask[distributed]'"),
    ("dask_jobqueue", ["--cluster", "slurm", "--cluster-config", "cluster.yaml"], "pip install dask-jobqueue"),
], ids=["batch-without-dask", "slurm-without-jobqueue"])
def test_missing_optional_package_is_one_line_with_the_install_command(cohort, tmp_path, capsys, monkeypatch,
                                                                       missing, extra, install):
    (tmp_path / "cluster.yaml").write_text("cores: 2\nmemory: 4GB\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, missing, None)
    folder = Path(cohort["good"][0]["input"]).parent
    code = cli_main(["batch", str(folder), str(tmp_path / "out"), "--method", "trilinear", "-q", *extra])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert install in lines[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
