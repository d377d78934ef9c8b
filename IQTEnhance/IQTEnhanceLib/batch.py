"""Cohort batch: enhance many volumes with one command, on this machine or a Dask cluster.

``iqt-enhance batch INPUTS OUTDIR --method M`` (see :func:`register`) and :func:`run_batch`.

* **One Dask task per volume** (:func:`process_volume`).  We schedule nothing ourselves: the default
  is a ``distributed.LocalCluster`` sized to the machine (:func:`local_cluster_size`), ``--scheduler``
  joins an existing cluster and ``--cluster slurm|pbs|sge`` starts one through dask-jobqueue.
  Each worker runs one volume at a time with ``T`` torch/BLAS threads, so workers × T never
  oversubscribes the cores (oversubscribed BLAS threads thrash instead of helping).
* **Model loaded once per worker**: a module-level cache on the worker, keyed by the model file's
  SHA-256 (:func:`cached_model`); tasks on the same worker reuse it.
* **Nothing lost, nothing half-made**: every output is written to a hidden temporary name beside it
  and renamed when complete (:func:`~.volume.write_volume`, same-folder ``os.replace``).  Its
  provenance sidecar ``<stem>_<method>.json`` (input checksum, method, model checksum, parameters)
  is written *after* the volume, so a volume without a matching sidecar is never trusted: a rerun
  skips exactly the volumes whose output exists and whose sidecar matches, and redoes the rest.
  A bad input is recorded with its one-sentence error and does not stop the others.  A worker that
  dies mid-volume is retried by Dask on another worker (``--retries`` deaths allowed) or reported;
  its temporary file is removed at the end of the run.
* **Report**: ``OUTDIR/batch.csv`` and ``OUTDIR/batch.json`` list every volume with its status
  (done / skipped / failed / cancelled), seconds, device, worker, error and, where a reference was
  given, NRMSE / PSNR / SSIM (:func:`~.metrics.evaluate`).

Dask is imported inside the functions that need it, so the rest of the library never pays for it.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import datetime
import glob as globlib
import io
import json
import math
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Optional

from .errors import InputError, IQTError, ModelError, require_module
from .files import PARTIAL_MARK, write_json_atomic, write_text_atomic
from .volume import SUPPORTED_SUFFIXES

DONE, SKIPPED, FAILED, CANCELLED = "done", "skipped", "failed", "cancelled"
REPORT_COLUMNS = ("name", "input", "output", "status", "seconds", "device", "worker", "error", "warnings",
                  "reference", "mask", "model", "nrmse", "psnr", "ssim")
OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
SIDECAR_FORMAT = 1
LOCK_NAME = ".iqt-batch.lock"
CLUSTER_KINDS = ("slurm", "pbs", "sge")
# A worker holds the model, one LQ volume, the HQ output (factor × larger) and the method's
# working copies; 2 GiB per worker is enough for a 1 mm whole brain with every method we ship.
MEMORY_PER_WORKER = 2 * 1024 ** 3
DASK_INSTALL = "pip install 'dask[distributed]'"
# Dask's dashboard has no authentication and its pages show input file names: loopback only unless
# the user opens it with --dashboard-address.
DEFAULT_DASHBOARD = "127.0.0.1:8787"


# -- inputs and output names ----------------------------------------------------------------
@dataclasses.dataclass
class BatchJob:
    """One volume of the cohort. Paths are absolute strings (they travel to the workers)."""

    name: str
    input: str
    output: str
    sidecar: str
    reference: Optional[str] = None
    mask: Optional[str] = None
    model: Optional[str] = None          # per-row model (CSV column ``model``); None: the run's model
    model_sha256: Optional[str] = None


def volume_stem(path) -> str:
    """File name without its volume suffix: ``sub-01_T1w.nii.gz`` → ``sub-01_T1w``."""
    name = Path(path).name
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _is_volume_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and any(
        path.name.lower().endswith(s) for s in SUPPORTED_SUFFIXES)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def collect_inputs(inputs, outdir=None) -> list:
    """Rows ``{"input", "reference", "mask", "model"}`` (absolute paths or None) from INPUTS:

    * a folder: every volume file in it (not recursive; hidden files skipped);
    * a CSV file: column ``input`` (required), optional ``reference``, ``mask`` and ``model``;
      relative paths are relative to the CSV's folder; empty cells mean "none";
    * anything else: a glob pattern (``**`` recurses), e.g. ``'data/sub-*/anat/*_T1w.nii.gz'``.

    Files under ``outdir`` are never taken as inputs (so OUTDIR may sit inside the input folder).
    """
    text = str(inputs)
    path = Path(text).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _is_volume_file(p))
        rows = [{"input": str(p.resolve())} for p in files]
        where = f"folder {path}"
    elif path.is_file() and path.suffix.lower() == ".csv":
        rows = _read_csv(path)
        where = f"CSV {path}"
    elif path.is_file():
        rows = [{"input": str(path.resolve())}]
        where = str(path)
    else:
        matches = sorted(globlib.glob(os.path.expanduser(text), recursive=True))
        rows = [{"input": str(Path(m).resolve())} for m in matches if Path(m).is_file()]
        where = f"pattern {text!r}"
        if not rows and not any(c in text for c in "*?["):
            raise InputError(f"{text}: no such file or folder")
    if outdir is not None:
        rows = [r for r in rows if not _inside(Path(r["input"]), Path(outdir))]
    if not rows:
        raise InputError(f"{where} holds no volume to enhance (looked for {', '.join(SUPPORTED_SUFFIXES)})")
    for row in rows:
        for key in ("reference", "mask", "model"):
            row.setdefault(key, None)
    return rows


def _read_csv(path: Path) -> list:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the CSV ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        raise InputError(f"{path}: the CSV is empty")
    columns = {(c or "").strip().lower(): c for c in reader.fieldnames}
    if "input" not in columns:
        raise InputError(f"{path}: the CSV needs an 'input' column (found: {', '.join(reader.fieldnames)})")
    base = path.resolve().parent
    rows = []
    for line, record in enumerate(reader, start=2):
        row = {}
        for key in ("input", "reference", "mask", "model"):
            value = (record.get(columns[key]) or "").strip() if key in columns else ""
            row[key] = str((base / Path(value).expanduser()).resolve()) if value else None
        if row["input"] is None:
            if any((v or "").strip() for v in record.values() if isinstance(v, str)):
                raise InputError(f"{path}, line {line}: the 'input' cell is empty")
            continue  # a blank line
        rows.append(row)
    return rows


def plan_jobs(rows: list, outdir, method: str, suffix: str = ".nii.gz") -> list:
    """Output names follow the inputs: ``OUTDIR/<stem>_<method><suffix>``.  Inputs sharing a file
    name (``sub-01/anat/T1w.nii.gz``, ``sub-02/anat/T1w.nii.gz``) get their folders in the name
    (``sub-01_anat_T1w_<method>``) so that no output overwrites another."""
    if suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"output suffix must be one of {', '.join(OUTPUT_SUFFIXES)} (got {suffix!r})")
    outdir = Path(outdir).expanduser().resolve()
    paths = [Path(r["input"]) for r in rows]
    stems = [volume_stem(p) for p in paths]
    counts = collections.Counter(stems)
    if any(n > 1 for n in counts.values()):
        common = Path(os.path.commonpath([str(p.parent) for p in paths]))
        for i, p in enumerate(paths):
            if counts[stems[i]] > 1:
                parts = p.parent.relative_to(common).parts
                stems[i] = "_".join(parts + (stems[i],))
    seen = collections.Counter()
    names = []
    for stem in stems:  # the same file listed twice (e.g. with two references)
        seen[stem] += 1
        names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    jobs = []
    for row, name in zip(rows, names):
        stem = f"{name}_{method}"
        jobs.append(BatchJob(
            name=name, input=row["input"], output=str(outdir / f"{stem}{suffix}"),
            sidecar=str(outdir / f"{stem}.json"), reference=row.get("reference"), mask=row.get("mask"),
            model=row.get("model"),
        ))
    return jobs


# -- the task that runs on a worker -----------------------------------------------------------
_MODEL_CACHE: "collections.OrderedDict[str, object]" = collections.OrderedDict()
_MODEL_LOADS: collections.Counter = collections.Counter()   # checksum -> loads in this process
_MODEL_LOCK = threading.Lock()
_MODEL_CACHE_SIZE = 2   # the run's model plus one per-row model; bounded so a worker's memory is too
_THREADS_SET: Optional[int] = None


def cached_model(path: str, expected_sha256: Optional[str] = None):
    """The worker's copy of a model, loaded once per worker process and reused by its later tasks.

    Keyed by the file's SHA-256: a model file replaced under the same name is loaded anew, and a
    file that changed since the batch started (``expected_sha256``) is refused."""
    from .models import file_checksum, load_model

    with _MODEL_LOCK:
        key = expected_sha256 or file_checksum(path)
        model = _MODEL_CACHE.get(key)
        if model is None:
            model = load_model(path)
            if expected_sha256 and model.checksum != expected_sha256:
                raise ModelError(f"{Path(path).name}: the model file changed after the batch started; rerun the batch")
            _MODEL_CACHE[key] = model
            _MODEL_LOADS[key] += 1
            while len(_MODEL_CACHE) > _MODEL_CACHE_SIZE:
                _MODEL_CACHE.popitem(last=False)
        else:
            _MODEL_CACHE.move_to_end(key)
        return model


def model_loads(checksum: str) -> int:
    """How many times this process loaded the model with ``checksum`` (1 when the cache works)."""
    return _MODEL_LOADS[checksum]


def limit_threads(threads: Optional[int], needs_torch: bool = False) -> None:
    """Hold this process to ``threads`` torch / BLAS / OpenMP threads (per volume).

    The local cluster also sets OMP/MKL/OpenBLAS_NUM_THREADS in the workers' environment before they
    start; this covers workers we did not start (``--scheduler``) and libraries loaded later."""
    global _THREADS_SET
    if not threads:
        return
    threads = int(threads)
    if _THREADS_SET != threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
        _THREADS_SET = threads
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)
    except ImportError:
        pass
    if needs_torch or "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def provenance_key(input_sha256: str, settings: dict, model_sha256: Optional[str]) -> dict:
    """What an output depends on; a rerun redoes a volume whose key differs."""
    return {
        "format": SIDECAR_FORMAT, "input_sha256": input_sha256, "method": settings["method"],
        "model_sha256": model_sha256, "factor": settings.get("factor"), "axis": settings.get("axis"),
        "options": settings.get("options") or {},
    }


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):   # numpy scalars
        return value.item()
    return value


def _read_sidecar(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def _metrics(output_volume, job: dict) -> tuple:
    """(metrics dict, {reference_sha256, mask_sha256}) of an output against the job's reference."""
    from .metrics import evaluate
    from .models import file_checksum
    from .volume import read_volume

    reference = read_volume(job["reference"])
    mask = read_volume(job["mask"], allow_label_map=True) if job.get("mask") else None
    result = evaluate(output_volume, reference, mask)
    basis = {"reference_sha256": file_checksum(job["reference"]),
             "mask_sha256": file_checksum(job["mask"]) if job.get("mask") else None}
    return {k: result[k] for k in ("nrmse", "psnr", "ssim")}, basis


def process_volume(job: dict, settings: dict) -> dict:
    """Enhance one volume of the cohort (the Dask task). Never raises for bad data: the returned row
    says ``done``, ``skipped`` or ``failed`` with the error's one sentence.

    ``job``: a :class:`BatchJob` as a dict.  ``settings``: method, model, model_sha256, factor, axis,
    device, options (every method option, defaults filled in), threads, force, save_extras.
    """
    started = time.perf_counter()
    row = {"name": job["name"], "input": job["input"], "output": job["output"], "status": FAILED,
           "seconds": 0.0, "device": None, "worker": _worker_name(), "error": "", "warnings": "",
           "reference": job.get("reference"), "mask": job.get("mask"),
           "model": job.get("model") or settings.get("model"), "nrmse": None, "psnr": None, "ssim": None,
           "model_loads": None}
    try:
        _process(job, settings, row)
    except IQTError as exc:
        row.update(status=FAILED, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one volume's bug or resource error must not stop the cohort
        first = str(exc).strip().splitlines()
        row.update(status=FAILED, error=f"{type(exc).__name__}: {first[0] if first else ''}".strip(": "),
                   traceback=traceback.format_exc(limit=8))
    row["seconds"] = round(time.perf_counter() - started, 3)
    if row["status"] == FAILED:
        row["output"] = ""   # nothing was written (an older file of that name, if any, is not vouched for)
    return row


def warm_worker(threads: Optional[int], method: Optional[str] = None, model: Optional[str] = None,
                model_sha256: Optional[str] = None) -> int:
    """Before a worker's first volume: import the engine and the method, set the thread limits and
    load the run's model into the worker's cache, so that a volume's ``seconds`` are its own work
    (the imports alone take about 1.5 s on a busy 2-core machine)."""
    from . import api, metrics  # noqa: F401
    from .methods import get_method

    spec = get_method(method) if method else None
    limit_threads(threads, bool(spec and spec.needs_torch))
    if model:
        try:
            cached_model(model, model_sha256)
        except IQTError:
            pass   # the tasks report it, one row each
    return os.getpid()


def _process(job: dict, settings: dict, row: dict) -> None:
    from . import api
    from .methods import get_method
    from .models import file_checksum
    from .volume import read_volume, write_volume

    method = settings["method"]
    spec = get_method(method)
    limit_threads(settings.get("threads"), spec.needs_torch)
    if not Path(job["input"]).is_file():
        raise InputError(f"{job['input']}: no such file")
    input_sha = file_checksum(job["input"])
    model_path = job.get("model") or settings.get("model")
    model_sha = job.get("model_sha256") if job.get("model") else settings.get("model_sha256")
    if model_path and not model_sha:
        if not Path(model_path).is_file():
            raise ModelError(f"{model_path}: no such model file")
        model_sha = file_checksum(model_path)
    key = provenance_key(input_sha, settings, model_sha)
    output, sidecar = Path(job["output"]), Path(job["sidecar"])

    if not settings.get("force") and output.exists():
        recorded = _read_sidecar(sidecar)
        if recorded is not None and recorded.get("provenance") == key and _output_unchanged(output, recorded):
            row.update(status=SKIPPED, device=recorded.get("device"))
            if job.get("reference"):
                _skipped_metrics(job, recorded, output, sidecar, row)
            return

    lq = read_volume(job["input"])
    model = cached_model(model_path, model_sha) if model_path else None
    planned = api.plan(lq, method, model=model, factor=settings.get("factor"), axis=settings.get("axis"),
                       device=settings.get("device", "auto"), options=settings.get("options"))
    result = api.execute(lq, planned)
    row["device"] = result.info["device"]
    row["warnings"] = "; ".join(result.info.get("warnings") or [])
    if model is not None:
        row["model_loads"] = model_loads(model.checksum)

    # Old sidecar first: from here until the new sidecar lands, the output is not vouched for,
    # so a worker dying in between makes the next run redo this volume.
    sidecar.unlink(missing_ok=True)
    extras = {}
    if settings.get("save_extras"):
        for extra_name, volume in result.extras.items():
            path = output.with_name(f"{sidecar.stem}_{extra_name}{output.name[len(sidecar.stem):]}")
            write_volume(volume, path)
            extras[extra_name] = path.name
    write_volume(result.volume, output)

    record = {"provenance": key, "input": job["input"], "output": output.name, "extras": extras,
              "output_bytes": output.stat().st_size, "output_sha256": file_checksum(output),
              "device": row["device"], "seconds": result.info["seconds"],
              "info": result.info, "worker": row["worker"], "model_path": model_path,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "library_version": _library_version()}
    if job.get("reference"):
        try:
            metrics, basis = _metrics(result.volume, job)
            row.update(metrics)
            record.update(metrics=metrics, metrics_for=basis)
        except Exception as exc:  # noqa: BLE001 - the volume is done; only its metrics are missing
            row["error"] = f"metrics not computed: {exc if isinstance(exc, IQTError) else repr(exc)}"
    write_json_atomic(sidecar, _json_safe(record))
    row["status"] = DONE


def _output_unchanged(output: Path, recorded: dict) -> bool:
    """The output's bytes are those its sidecar vouches for (size first: it costs nothing)."""
    from .models import file_checksum

    try:
        return (recorded.get("output_bytes") == output.stat().st_size
                and recorded.get("output_sha256") == file_checksum(output))
    except OSError:
        return False


def _skipped_metrics(job: dict, recorded: dict, output: Path, sidecar: Path, row: dict) -> None:
    """Metrics of a kept output: reused from its sidecar when the reference and mask are unchanged."""
    from .models import file_checksum
    from .volume import read_volume

    try:
        basis = {"reference_sha256": file_checksum(job["reference"]),
                 "mask_sha256": file_checksum(job["mask"]) if job.get("mask") else None}
        if recorded.get("metrics") and recorded.get("metrics_for") == basis:
            row.update(recorded["metrics"])
            return
        metrics, basis = _metrics(read_volume(output), job)
        row.update(metrics)
        recorded.update(metrics=metrics, metrics_for=basis)
        write_json_atomic(sidecar, _json_safe(recorded))
    except (IQTError, OSError) as exc:
        row["error"] = f"metrics not computed: {exc}"


def _library_version() -> str:
    from . import __version__

    return __version__


def partial_files(outdir) -> list:
    """Temporary files left in ``outdir`` by writes that never finished (a worker killed mid-write).

    Only called while this run holds the folder's lock and no task of it is running, so every
    such file is stale."""
    folder = Path(outdir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f".*{PARTIAL_MARK}*") if p.is_file())


# The README's examples of --cluster-config (tested in Testing/Python/test_batch.py).
EXAMPLE_SLURM_CONFIG = """\
# cluster.yaml: the settings of dask_jobqueue.SLURMCluster; one SLURM job runs `processes` workers
queue: normal                # partition
account: my-lab              # drop it if your site has no accounts
cores: 8                     # CPU cores per job
processes: 4                 # workers per job: each enhances one volume at a time with 8/4 = 2 threads
memory: 16GB                 # per job, so 4 GB per worker
walltime: "04:00:00"
job_script_prologue:
  - source ~/venvs/iqt/bin/activate   # the environment where IQTEnhance is installed
scheduler_options:
  interface: ib0             # the network the compute nodes reach this machine on
adapt:                       # submit jobs while volumes wait, cancel them when idle
  minimum_jobs: 0
  maximum_jobs: 25
"""

EXAMPLE_SLURM_GPU_CONFIG = """\
# gpu.yaml: one worker per GPU job (use with --device cuda)
queue: gpu
cores: 8
processes: 1
memory: 32GB
walltime: "04:00:00"
job_extra_directives: ["--gres=gpu:1"]
jobs: 4                      # four GPU jobs = four volumes at a time
"""

# -- the client side: settings, cluster, run, report -------------------------------------------
def resolve_settings(method: str, *, model=None, factor=None, axis=None, device: str = "auto",
                     options: Optional[dict] = None, threads: Optional[int] = None, force: bool = False,
                     save_extras: bool = False, require_model: bool = True) -> dict:
    """Check the run's arguments once, before any worker starts: unknown method or option, a model
    of another method or a corrupt model file is one clear error here, not one per volume."""
    from .devices import DEVICES
    from .methods import get_method
    from .models import default_model_path, load_model

    spec = get_method(method)
    # defaults filled in, so that giving an option its default value does not redo a cohort
    resolved = spec.validate_options(options)
    if str(device or "auto").lower().split(":")[0] not in DEVICES + ("gpu",):
        raise InputError(f"device must be one of {', '.join(DEVICES)} (got {device!r})")
    model_path, model_sha = None, None
    if spec.needs_model and (model is not None or require_model):
        model_path = Path(model).expanduser().resolve() if model is not None else default_model_path(method)
        loaded = load_model(model_path)
        loaded.check_fits(method=method, factor=factor)
        model_path, model_sha = str(model_path), loaded.checksum
    elif model is not None:
        raise InputError(f"method {method} takes no model file")
    return {"method": method, "model": model_path, "model_sha256": model_sha,
            "factor": int(factor) if factor is not None else None,
            "axis": None if axis in (None, "auto") else str(axis).lower(), "device": device or "auto",
            "options": resolved, "threads": threads, "force": bool(force), "save_extras": bool(save_extras),
            "needs_torch": spec.needs_torch}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _total_memory() -> Optional[int]:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return None


def local_cluster_size(workers: Optional[int] = None, threads: Optional[int] = None, *,
                       cores: Optional[int] = None, memory: Optional[int] = None) -> tuple:
    """(workers, threads per worker) for a LocalCluster: workers × threads = the cores.

    With neither given, one single-threaded worker per core: volumes are independent, so running
    them side by side scales better than splitting one volume over threads (measured in
    Testing/benchmarks/bench_batch.py), capped so that each worker has MEMORY_PER_WORKER."""
    cores = cores or available_cores()
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1 (got {workers})")
    if threads is not None and threads < 1:
        raise InputError(f"--threads-per-worker must be at least 1 (got {threads})")
    if workers is None and threads is None:
        threads = 1
        workers = cores
        memory = memory if memory is not None else _total_memory()
        if memory:
            workers = max(1, min(workers, memory // MEMORY_PER_WORKER))
    elif threads is None:
        threads = max(1, cores // workers)
    elif workers is None:
        workers = max(1, cores // threads)
    return int(workers), int(threads)


def _thread_env(threads: int) -> dict:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "OPENBLAS_NUM_THREADS": str(threads)}


def read_cluster_config(path) -> dict:
    """A dask-jobqueue configuration file (YAML or JSON): the keyword arguments of SLURMCluster /
    PBSCluster / SGECluster (``queue``, ``account``, ``cores``, ``processes``, ``memory``,
    ``walltime``, ``job_extra_directives``, ``job_script_prologue``, ...), optionally nested as in
    dask's own ``jobqueue: {slurm: {...}}``, plus ``adapt: {minimum, maximum}`` (jobs scale with
    the queue of volumes) or ``jobs: N``."""
    import yaml

    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise InputError(f"{path}: cannot read the cluster configuration ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: the cluster configuration must be a mapping of settings")
    return data


def make_jobqueue_cluster(kind: str, config: dict, workers: Optional[int] = None,
                          threads: Optional[int] = None, scale: bool = True,
                          dashboard: str = DEFAULT_DASHBOARD) -> tuple:
    """Start a dask-jobqueue cluster. Returns (cluster, torch threads per volume).

    Each worker process runs one volume at a time (``--nthreads 1``) with T = cores / processes
    torch/BLAS threads (or ``threads``), exported in the job script before Python starts."""
    dask_jobqueue = require_module("dask_jobqueue", f"--cluster {kind}", "pip install dask-jobqueue")

    kind = kind.lower()
    if kind not in CLUSTER_KINDS:
        raise InputError(f"--cluster must be one of {', '.join(CLUSTER_KINDS)} (got {kind!r})")
    config = dict(config)
    if isinstance(config.get("jobqueue"), dict):
        config = dict(config["jobqueue"].get(kind) or {})
    adapt = config.pop("adapt", None)
    jobs = config.pop("jobs", None)
    if "cores" not in config or "memory" not in config:
        raise InputError(f"the {kind} cluster configuration needs at least 'cores' and 'memory' (per job)")
    cores = int(config["cores"])
    processes = int(config.get("processes") or max(1, cores // (threads or 1)))
    config["processes"] = processes
    threads = int(threads or max(1, cores // processes))
    config["worker_extra_args"] = list(config.get("worker_extra_args") or []) + ["--nthreads", "1"]
    config["scheduler_options"] = {"dashboard_address": dashboard, **dict(config.get("scheduler_options") or {})}
    config["job_script_prologue"] = list(config.get("job_script_prologue") or []) + [
        f"export {k}={v}" for k, v in _thread_env(threads).items()]
    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster,
           "sge": dask_jobqueue.SGECluster}[kind]
    try:
        cluster = cls(**config)
    except TypeError as exc:
        raise InputError(f"the {kind} cluster configuration has a setting dask-jobqueue does not know ({exc})") from None
    if not scale:
        pass
    elif adapt:
        cluster.adapt(**(adapt if isinstance(adapt, dict) else {}))
    elif jobs:
        cluster.scale(jobs=int(jobs))
    else:
        cluster.scale(n=int(workers or processes))
    return cluster, threads


@dataclasses.dataclass
class BatchReport:
    rows: list
    outdir: Path
    seconds: float
    cluster: dict
    settings: dict

    @property
    def counts(self) -> dict:
        counts = collections.Counter(r["status"] for r in self.rows)
        return {s: counts.get(s, 0) for s in (DONE, SKIPPED, FAILED, CANCELLED)}

    @property
    def failed(self) -> list:
        return [r for r in self.rows if r["status"] in (FAILED, CANCELLED)]

    @property
    def csv_path(self) -> Path:
        return self.outdir / "batch.csv"

    @property
    def json_path(self) -> Path:
        return self.outdir / "batch.json"


class _OutdirLock:
    """One batch at a time per OUTDIR: two runs would sweep each other's temporary files."""

    def __init__(self, outdir: Path):
        self.path = outdir / LOCK_NAME
        self.held = False

    def __enter__(self):
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = _read_sidecar(self.path) or {}
                if other.get("host") == me["host"] and not _pid_alive(other.get("pid")):
                    self.path.unlink(missing_ok=True)   # left by a run that was killed on this machine
                    continue
                raise InputError(
                    f"{self.path.parent}: another batch (pid {other.get('pid')} on {other.get('host')}, started "
                    f"{other.get('started')}) is writing here; if it is not running, delete {self.path}") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise InputError(f"{self.path}: cannot take the batch lock")

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
        return False


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _dashboard(client) -> str:
    import importlib.util

    link = getattr(client, "dashboard_link", None)
    if not link:
        return "no dashboard"
    if importlib.util.find_spec("bokeh") is None:
        return f"{link} (needs `pip install bokeh` to show)"
    return link


def _recovered_row(job: BatchJob, settings: dict) -> Optional[dict]:
    """A task whose worker died *after* it wrote the volume and its sidecar (the result never came
    back): done after all, when the sidecar's provenance matches this run's."""
    from .models import file_checksum

    recorded = _read_sidecar(Path(job.sidecar))
    if recorded is None or not Path(job.output).is_file():
        return None
    try:
        model_sha = job.model_sha256 if job.model else settings.get("model_sha256")
        key = provenance_key(file_checksum(job.input), settings, model_sha)
    except OSError:
        return None
    if recorded.get("provenance") != key:
        return None
    row = _killed_row(job, settings, RuntimeError(""))
    metrics = recorded.get("metrics") or {}
    row.update(status=DONE, error="", output=job.output, device=recorded.get("device"),
               seconds=recorded.get("seconds"), worker=recorded.get("worker"),
               warnings="its worker died after writing it; the output and its sidecar are complete",
               **{k: metrics.get(k) for k in ("nrmse", "psnr", "ssim")})
    return row


def _killed_row(job: BatchJob, settings: dict, exc: BaseException) -> dict:
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        error = ("the worker enhancing it died (killed, out of memory or crashed) as often as --retries "
                 "allows; no output was written. See the worker logs; a rerun tries it again")
    else:
        first = str(exc).strip().splitlines()
        error = f"{type(exc).__name__}: {first[0] if first else ''}".strip(": ")
    return {"name": job.name, "input": job.input, "output": "", "status": FAILED, "seconds": None,
            "device": None, "worker": None, "error": error, "warnings": "", "reference": job.reference,
            "mask": job.mask, "model": job.model or settings.get("model"), "nrmse": None, "psnr": None,
            "ssim": None}


def run_batch(inputs, outdir, method: str, *, model=None, factor=None, axis=None, device: str = "auto",
              options: Optional[dict] = None, client=None, scheduler: Optional[str] = None,
              cluster: Optional[str] = None, cluster_config=None, workers: Optional[int] = None,
              threads_per_worker: Optional[int] = None, retries: int = 2, force: bool = False,
              save_extras: bool = False, suffix: str = ".nii.gz", progress=True, cancel=None,
              log=print, dashboard: str = DEFAULT_DASHBOARD) -> BatchReport:
    """Enhance every volume of INPUTS into OUTDIR (see the module docstring); returns the report.

    ``client``: an existing ``distributed.Client`` (its workers are used as they are);
    ``scheduler``: the address of a running Dask scheduler; ``cluster`` + ``cluster_config``:
    start a dask-jobqueue cluster; none of these: a LocalCluster of ``workers`` processes ×
    ``threads_per_worker`` threads (default: sized to the machine).  ``retries``: how many worker
    deaths one volume survives before it is reported failed (LocalCluster and jobqueue only; a
    running scheduler keeps its own ``distributed.scheduler.allowed-failures``).
    ``progress``: True for a tqdm bar on stderr, a ``progress(fraction, message)`` callable called
    as volumes complete, or None.  ``cancel()``: polled while waiting; when it returns True the
    volumes not finished are cancelled and reported ``cancelled`` (a rerun does them).
    ``dashboard``: where a cluster this call starts serves Dask's dashboard (loopback by default:
    it has no authentication)."""
    started = time.perf_counter()
    if client is None:
        require_module("distributed", "iqt-enhance batch", DASK_INSTALL)
    if cluster:
        require_module("dask_jobqueue", f"--cluster {cluster}", "pip install dask-jobqueue")
    outdir = Path(outdir).expanduser().resolve()
    given = [x for x in (client, scheduler, cluster) if x]
    if len(given) > 1:
        raise InputError("give at most one of --scheduler and --cluster")
    if cluster and not cluster_config:
        raise InputError(f"--cluster {cluster} needs --cluster-config FILE (see the README's example)")
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir}: exists and is not a folder")
    if Path(str(inputs)).expanduser().is_dir() and Path(str(inputs)).expanduser().resolve() == outdir:
        raise InputError(f"{outdir}: OUTDIR must differ from the input folder (a subfolder of it is fine)")
    rows_in = collect_inputs(inputs, outdir)
    jobs = plan_jobs(rows_in, outdir, method, suffix)
    settings = resolve_settings(method, model=model, factor=factor, axis=axis, device=device, options=options,
                                threads=threads_per_worker, force=force, save_extras=save_extras,
                                require_model=any(not r.get("model") for r in rows_in))
    settings["dashboard"] = dashboard
    _checksum_row_models(jobs, settings)
    outdir.mkdir(parents=True, exist_ok=True)
    with _OutdirLock(outdir):
        for stale in partial_files(outdir):
            stale.unlink(missing_ok=True)
        own, cluster_info = None, {}
        try:
            client, own, cluster_info = _open_client(client, scheduler, cluster, cluster_config, workers,
                                                     threads_per_worker, retries, settings, log)
            try:
                client.run(warm_worker, settings["threads"], method, settings["model"], settings["model_sha256"])
            except Exception:  # noqa: BLE001 - warming is an optimisation; the tasks import what they need
                pass
            rows = _run_tasks(client, jobs, settings, progress, cancel)
        finally:
            if own is not None:
                _close(own)
            for stale in partial_files(outdir):
                stale.unlink(missing_ok=True)
        report = BatchReport(rows=rows, outdir=outdir, seconds=time.perf_counter() - started,
                             cluster=cluster_info, settings=settings)
        write_report(report)
    return report


def _checksum_row_models(jobs: list, settings: dict) -> None:
    """Per-row models (CSV column ``model``) are checksummed once here; a missing or corrupt one
    fails only its rows, on the worker, with the model loader's error."""
    from .models import file_checksum

    sums = {}
    for job in jobs:
        if not job.model:
            continue
        if not _needs_model(settings["method"]):
            raise InputError(f"method {settings['method']} takes no model file, but the CSV gives one for {job.name}")
        if job.model not in sums:
            try:
                sums[job.model] = file_checksum(job.model)
            except OSError:
                sums[job.model] = None
        job.model_sha256 = sums[job.model]


def _needs_model(method: str) -> bool:
    from .methods import get_method

    return get_method(method).needs_model


def _open_client(client, scheduler, cluster, cluster_config, workers, threads, retries, settings, log):
    """(client, what to close afterwards or None, description); run_batch checked for dask."""
    import dask
    from distributed import Client

    if client is not None:
        settings["threads"] = settings["threads"] or 1
        info = {"kind": "client", "address": client.scheduler.address, "threads_per_volume": settings["threads"]}
    elif scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from None
        settings["threads"] = settings["threads"] or 1
        info = {"kind": "scheduler", "address": scheduler, "threads_per_volume": settings["threads"]}
        log(f"Connected to the Dask scheduler at {scheduler} "
            f"({len(client.scheduler_info().get('workers', {}))} workers now)")
        return client, client, dict(info, dashboard=_dashboard(client))
    elif cluster:
        config = read_cluster_config(cluster_config)
        with dask.config.set({"distributed.scheduler.allowed-failures": int(retries)}):
            jq, threads = make_jobqueue_cluster(cluster, config, workers, threads,
                                                dashboard=settings["dashboard"])
        settings["threads"] = threads
        client = Client(jq)
        info = {"kind": cluster, "threads_per_volume": threads, "job_script": jq.job_script()}
        log(f"Started a {cluster.upper()} cluster through dask-jobqueue (workers arrive as the jobs start)")
        return client, _Both(client, jq), dict(info, dashboard=_dashboard(client))
    else:
        needs_gpu = settings["needs_torch"] and str(settings["device"]).lower() in ("auto", "cuda", "gpu")
        if needs_gpu and workers is None and _cuda_available():
            # one GPU: one worker feeds it with every core; several GPUs: see the README (dask-cuda)
            workers = 1
        n, threads = local_cluster_size(workers, threads)
        if n * threads > available_cores():
            log(f"warning: {n} workers × {threads} threads exceed the {available_cores()} cores of this machine")
        settings["threads"] = threads
        lc = start_local_cluster(n, threads, retries, settings["dashboard"])
        client = Client(lc)
        info = {"kind": "local", "workers": n, "threads_per_volume": threads}
        log(f"Local Dask cluster: {n} worker process(es), each one volume at a time with {threads} thread(s)")
        own = _Both(client, lc)
        info["dashboard"] = _dashboard(client)
        log(f"Dask dashboard: {info['dashboard']}")
        return client, own, info
    info["dashboard"] = _dashboard(client)
    log(f"Dask dashboard: {info['dashboard']}")
    return client, None, info


def start_local_cluster(workers: int, threads: int, retries: int = 2, dashboard: str = DEFAULT_DASHBOARD):
    """The LocalCluster of the command: ``workers`` processes on the loopback interface, each running
    one volume at a time (one Dask thread) with ``threads`` BLAS/OpenMP/torch threads.

    Dask's workers start with MALLOC_TRIM_THRESHOLD_=65536 (to hand memory back to the OS early);
    setting it turns off glibc's adaptive mmap threshold, so every large numpy temporary is mmapped
    and page-faulted anew: measured here, a linear-model volume took ~1.05-1.2 s in such a worker
    against ~0.75-0.95 s in a plain process (+25-30%), and the same as a plain process without it.
    Our workers run one volume at a time, so we leave glibc's default."""
    import dask
    from distributed import LocalCluster

    environ = {k: v for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ") or {}).items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    with dask.config.set({"distributed.scheduler.allowed-failures": int(retries),
                          "distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                            env=_thread_env(threads), dashboard_address=dashboard, host="127.0.0.1")


def _cuda_available() -> bool:
    from .devices import cuda_available

    return cuda_available()


class _Both:
    def __init__(self, client, cluster):
        self.client, self.cluster = client, cluster

    def close(self):
        self.client.close()
        self.cluster.close()


def _close(thing) -> None:
    try:
        thing.close()
    except Exception:  # noqa: BLE001 - closing must not hide the run's own result or error
        pass


def _run_tasks(client, jobs: list, settings: dict, progress, cancel) -> list:
    """Submit one task per volume and collect the rows as tasks complete (input order kept)."""
    from distributed import as_completed

    token = uuid.uuid4().hex[:8]
    task_settings = {k: v for k, v in settings.items() if k not in ("needs_torch", "dashboard")}
    futures = {}
    for index, job in enumerate(jobs):
        future = client.submit(process_volume, dataclasses.asdict(job), task_settings,
                               key=f"iqt-enhance-{job.name}-{token}", pure=False)
        futures[future] = index
    rows = [None] * len(jobs)
    counts = collections.Counter()
    bar = None
    if progress is True and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=settings["method"], unit="vol", file=sys.stderr, dynamic_ncols=True)
    pending = as_completed(list(futures))
    try:
        while not pending.is_empty():
            if cancel is not None and cancel():
                break
            if not pending.has_ready():
                time.sleep(0.05)   # polled so that a cancel (the CLI's Ctrl-C) is seen within 50 ms
                continue
            for future in pending.next_batch(block=False):
                index = futures[future]
                try:
                    row = future.result()
                except Exception as exc:  # noqa: BLE001 - KilledWorker, lost connection: reported, not raised
                    row = _recovered_row(jobs[index], settings) or _killed_row(jobs[index], settings, exc)
                rows[index] = row
                counts[row["status"]] += 1
                done = sum(counts.values())
                message = f"{row['name']}: {row['status']}" + (f" ({row['error']})" if row["error"] else "")
                if bar is not None:
                    if row["status"] == FAILED:
                        bar.write(f"failed: {message}")
                    bar.set_postfix({k: counts[k] for k in (DONE, SKIPPED, FAILED)}, refresh=False)
                    bar.update(1)
                elif progress is True:   # not a terminal (CI, nohup): one line per volume
                    seconds = f", {row['seconds']:.1f} s" if row.get("seconds") else ""
                    print(f"[{done}/{len(jobs)}] {message}{seconds}", file=sys.stderr, flush=True)
                elif callable(progress):
                    progress(done / len(jobs), message)
    except KeyboardInterrupt:
        pass   # a second Ctrl-C: report what finished; the rest is cancelled below
    finally:
        if any(r is None for r in rows):
            client.cancel([f for f, i in futures.items() if rows[i] is None])
        if bar is not None:
            bar.close()
    for index, row in enumerate(rows):
        if row is None:
            rows[index] = dict(_killed_row(jobs[index], settings, RuntimeError("")), status=CANCELLED,
                               error="cancelled before it finished; a rerun does it")
    return rows


def write_report(report: BatchReport) -> None:
    """``batch.csv`` (one row per volume) and ``batch.json`` (the run's settings, cluster and rows)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=REPORT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in REPORT_COLUMNS})
    write_text_atomic(report.csv_path, buf.getvalue())
    settings = {k: v for k, v in report.settings.items() if k != "needs_torch"}
    cluster = {k: v for k, v in report.cluster.items() if k != "job_script"}
    write_json_atomic(report.json_path, _json_safe({
        "format": "iqtenhance-batch-report", "library_version": _library_version(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(report.seconds, 3), "counts": report.counts, "settings": settings,
        "cluster": cluster, "volumes": report.rows,
    }))


def _csv_cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.6g}"
    return value


# -- command line ---------------------------------------------------------------------------
EXIT_SOME_FAILED = 3


def register(subparsers) -> None:
    """Add ``iqt-enhance batch`` (called by :mod:`.cli` with its sub-parsers)."""
    from .cli import add_enhance_arguments

    p = subparsers.add_parser(
        "batch", formatter_class=_formatter(),
        help="enhance a cohort (folder, glob or CSV) on this machine or a Dask cluster",
        description="Enhance every volume of INPUTS into OUTDIR/<name>_<METHOD>.nii.gz, one Dask task per volume. "
                    "INPUTS is a folder (every volume file in it), a glob pattern (quote it; ** recurses) or a CSV "
                    "with an 'input' column and optional 'reference' and 'mask' columns (then NRMSE/PSNR/SSIM are "
                    "reported) and 'model' (a model per row); relative CSV paths are relative to the CSV's folder. "
                    "Each output gets a provenance sidecar <name>_<METHOD>.json (input checksum, method, model "
                    "checksum, parameters); a rerun skips the volumes whose output and sidecar match and redoes "
                    "the rest. OUTDIR/batch.csv and batch.json report every volume (done/skipped/failed/"
                    "cancelled, seconds, device, error, metrics).",
        epilog="Exit codes: 0 every volume done or skipped; 3 some volumes failed (listed in batch.csv, the others "
               "are done); 2 bad arguments; 130 interrupted (finished volumes are kept; a rerun resumes).\n"
               "Default cluster: a local one with one single-threaded worker process per core. On SLURM/PBS/SGE: "
               "--cluster slurm --cluster-config cluster.yaml (dask-jobqueue settings: cores, processes, memory, "
               "walltime, queue, account, ...; see the README).")
    p.add_argument("inputs", metavar="INPUTS", help="folder, glob pattern or CSV of the LQ volumes")
    p.add_argument("outdir", metavar="OUTDIR", help="output folder (created; files under it are never inputs)")
    add_enhance_arguments(p, method_help="", device_help="on each worker, auto = CUDA when the worker has it",
                          axis_help="each volume's axis with the largest spacing")
    g = p.add_argument_group("where it runs")
    g.add_argument("--workers", type=int, default=None,
                   help="worker processes (local cluster; with --cluster: workers to request). Default: the cores")
    g.add_argument("--threads-per-worker", type=int, default=None, metavar="T",
                   help="torch/BLAS threads per volume; each worker runs one volume at a time, so workers x T "
                        "should not exceed the cores (default: cores / workers)")
    g.add_argument("--scheduler", metavar="ADDRESS", help="use a running Dask scheduler (tcp://host:8786)")
    g.add_argument("--cluster", choices=CLUSTER_KINDS, help="start workers as batch jobs through dask-jobqueue")
    g.add_argument("--cluster-config", metavar="FILE",
                   help="YAML with the dask-jobqueue settings of --cluster (see the README)")
    g.add_argument("--dashboard-address", default=DEFAULT_DASHBOARD, metavar="HOST:PORT",
                   help="where a cluster this command starts serves Dask's dashboard; it has no authentication "
                        "and shows file names, so it listens on this machine only unless you open it "
                        "(e.g. 0.0.0.0:8787)")
    g.add_argument("--retries", type=int, default=2,
                   help="how many worker deaths one volume survives before it is reported failed")
    o = p.add_argument_group("outputs")
    o.add_argument("--force", action="store_true", help="redo every volume, even those whose output matches")
    o.add_argument("--save-extras", action="store_true",
                   help="also write the method's extra maps (e.g. trust) as <name>_<METHOD>_<map>.nii.gz")
    o.add_argument("--suffix", choices=OUTPUT_SUFFIXES, default=".nii.gz", help="output file type")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-O", "--option", action="append", metavar="NAME=VALUE",
                   help="a method option (repeatable), e.g. -O stride=2; see `iqt-enhance enhance --method M --help`")
    _add_all_method_flags(p)
    p.set_defaults(func=cmd_batch)


def _formatter():
    try:
        from .cli import _Formatter

        return _Formatter
    except ImportError:
        import argparse

        return argparse.RawDescriptionHelpFormatter


def _add_all_method_flags(parser) -> None:
    """Generated ``--<option>`` flags for every installed method's options (the batch command sees
    no argv to pick one method's); a flag the chosen method lacks is an error in :func:`cmd_batch`."""
    from .methods import METHOD_MODULES, get_method

    try:
        from .cli import add_method_options
    except ImportError:
        return
    merged = {}   # option name -> (first option, methods having it, types)
    for name in METHOD_MODULES:
        try:
            spec = get_method(name)
        except Exception:  # noqa: BLE001 - a method that cannot load is reported when chosen
            continue
        for option in spec.options:
            first, methods, types = merged.setdefault(option.name, (option, [], set()))
            methods.append(name)
            types.add(option.type)
    options = []
    for first, methods, types in merged.values():
        # the chosen method's own type and choices are applied by collect_method_options
        kind = first.type if len(types) == 1 else str
        options.append(dataclasses.replace(first, type=kind, choices=None, default="the method's",
                                           help=f"[{', '.join(methods)}] {first.help}"))
    if options:
        add_method_options(parser, "method options (see `iqt-enhance enhance --method M --help`)", options, "batch")


def cmd_batch(args) -> int:
    from .cli import cancel_requested, collect_method_options
    from .methods import get_method

    spec = get_method(args.method)
    known = {o.name for o in spec.options}
    stray = [k[len("opt__"):] for k, v in vars(args).items()
             if k.startswith("opt__") and v is not None and k[len("opt__"):] not in known]
    if stray:   # another method's flag: the validator's own "has no option" error
        spec.validate_options(dict.fromkeys(stray))
    options = collect_method_options(args, spec.options, args.method)
    if args.cluster and args.scheduler:
        raise InputError("give either --scheduler or --cluster, not both")
    if args.cluster_config and not args.cluster:
        raise InputError("--cluster-config needs --cluster slurm|pbs|sge")
    report = run_batch(
        args.inputs, args.outdir, args.method, model=args.model, factor=args.factor, axis=args.axis,
        device=args.device, options=options, scheduler=args.scheduler, cluster=args.cluster,
        cluster_config=args.cluster_config, workers=args.workers, threads_per_worker=args.threads_per_worker,
        retries=args.retries, force=args.force, save_extras=args.save_extras, suffix=args.suffix,
        progress=not args.quiet, cancel=cancel_requested, log=lambda m: print(m, flush=True),
        dashboard=args.dashboard_address)
    c = report.counts
    print(f"{len(report.rows)} volume(s) in {report.seconds:.1f} s: {c[DONE]} done, {c[SKIPPED]} skipped "
          f"(unchanged), {c[FAILED]} failed{f', {c[CANCELLED]} cancelled' if c[CANCELLED] else ''}; "
          f"report: {report.csv_path}", flush=True)
    for row in report.failed:
        print(f"  {row['status']}: {row['name']}: {row['error']}", file=sys.stderr)
    if c[CANCELLED]:
        return 130
    return EXIT_SOME_FAILED if c[FAILED] else 0
