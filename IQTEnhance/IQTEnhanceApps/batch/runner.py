"""Running a batch: one lock per output folder, one Dask task per volume, failures recorded per
volume, leftovers of dead workers removed, the report written at the end.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

from IQTEnhanceApps.batch.cluster import DASK_INSTALL, DEFAULT_DASHBOARD, _open_client
from IQTEnhanceApps.batch.jobs import (
    CANCELLED,
    DONE,
    FAILED,
    SKIPPED,
    collect_inputs,
    plan_jobs,
    resolve_settings,
)
from IQTEnhanceApps.batch.report import (
    BatchReport,
    _killed_row,
    _recovered_row,
    write_report,
)
from IQTEnhanceApps.batch.worker import (
    _read_sidecar,
    partial_files,
    process_volume,
    warm_worker,
)
from IQTEnhanceLib.errors import InputError, require_module

LOCK_NAME = ".iqt-batch.lock"


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
                shared = settings["model"] if settings["model"] != "self" else None   # self: one per scan
                client.run(warm_worker, settings["threads"], method, shared, settings["model_sha256"])
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
    from IQTEnhanceLib.models import file_checksum

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
    from IQTEnhanceLib.methods import get_method

    return get_method(method).needs_model


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


# -- command line ---------------------------------------------------------------------------
EXIT_SOME_FAILED = 3
