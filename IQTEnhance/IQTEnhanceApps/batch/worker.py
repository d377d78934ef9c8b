"""One volume on a worker: the model cached per worker (by checksum), threads limited, the output
written atomically before its provenance sidecar, and a rerun's skip test.
"""
from __future__ import annotations

import collections
import datetime
import json
import os
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Optional

from IQTEnhanceApps.batch.jobs import DONE, FAILED, SKIPPED
from IQTEnhanceLib.errors import InputError, IQTError, ModelError
from IQTEnhanceLib.files import PARTIAL_MARK, write_json_atomic

SIDECAR_FORMAT = 1


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
    from IQTEnhanceLib.models import file_checksum, load_model

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
    key = {
        "format": SIDECAR_FORMAT, "input_sha256": input_sha256, "method": settings["method"],
        "model_sha256": model_sha256, "factor": settings.get("factor"), "axis": settings.get("axis"),
        "options": settings.get("options") or {},
    }
    if settings.get("model") == "self":
        key["model"] = "self"      # learned from the scan: the input and the settings determine it
    return key


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
    from IQTEnhanceLib.metrics import evaluate
    from IQTEnhanceLib.models import file_checksum
    from IQTEnhanceLib.volume import read_volume

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
    from IQTEnhanceLib import api, metrics  # noqa: F401
    from IQTEnhanceLib.methods import get_method

    spec = get_method(method) if method else None
    limit_threads(threads, bool(spec and spec.needs_torch))
    if model:
        try:
            cached_model(model, model_sha256)
        except IQTError:
            pass   # the tasks report it, one row each
    return os.getpid()


def _process(job: dict, settings: dict, row: dict) -> None:
    from IQTEnhanceLib import api
    from IQTEnhanceLib.methods import get_method
    from IQTEnhanceLib.models import file_checksum
    from IQTEnhanceLib.volume import read_volume, write_volume

    method = settings["method"]
    spec = get_method(method)
    limit_threads(settings.get("threads"), spec.needs_torch)
    if not Path(job["input"]).is_file():
        raise InputError(f"{job['input']}: no such file")
    input_sha = file_checksum(job["input"])
    model_path = job.get("model") or settings.get("model")
    model_sha = job.get("model_sha256") if job.get("model") else settings.get("model_sha256")
    learn = model_path == "self"      # learned from each scan: the provenance is the input and the settings
    if learn:
        model_path, model_sha = None, None
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
    model = "self" if learn else (cached_model(model_path, model_sha) if model_path else None)
    planned = api.plan(lq, method, model=model, factor=settings.get("factor"), axis=settings.get("axis"),
                       device=settings.get("device", "auto"), options=settings.get("options"))
    result = api.execute(lq, planned)
    row["device"] = result.info["device"]
    row["warnings"] = "; ".join(result.info.get("warnings") or [])
    if model is not None and not learn:
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
    from IQTEnhanceLib.models import file_checksum

    try:
        return (recorded.get("output_bytes") == output.stat().st_size
                and recorded.get("output_sha256") == file_checksum(output))
    except OSError:
        return False


def _skipped_metrics(job: dict, recorded: dict, output: Path, sidecar: Path, row: dict) -> None:
    """Metrics of a kept output: reused from its sidecar when the reference and mask are unchanged."""
    from IQTEnhanceLib.models import file_checksum
    from IQTEnhanceLib.volume import read_volume

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
    from IQTEnhanceLib import __version__

    return __version__


def partial_files(outdir) -> list:
    """Temporary files left in ``outdir`` by writes that never finished (a worker killed mid-write).

    Only called while this run holds the folder's lock and no task of it is running, so every
    such file is stale."""
    folder = Path(outdir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f".*{PARTIAL_MARK}*") if p.is_file())
