"""The batch report: one row per volume (done / skipped / failed / cancelled), written as
``batch.csv`` and ``batch.json``.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import datetime
import io
import math
from pathlib import Path
from typing import Optional

from IQTEnhanceApps.batch.jobs import CANCELLED, DONE, FAILED, SKIPPED, BatchJob
from IQTEnhanceApps.batch.worker import (
    _json_safe,
    _library_version,
    _read_sidecar,
    provenance_key,
)
from IQTEnhanceLib.files import write_json_atomic, write_text_atomic

REPORT_COLUMNS = ("name", "input", "output", "status", "seconds", "device", "worker", "error", "warnings",
                  "reference", "mask", "model", "nrmse", "psnr", "ssim")


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


def _recovered_row(job: BatchJob, settings: dict) -> Optional[dict]:
    """A task whose worker died *after* it wrote the volume and its sidecar (the result never came
    back): done after all, when the sidecar's provenance matches this run's."""
    from IQTEnhanceLib.models import file_checksum

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
