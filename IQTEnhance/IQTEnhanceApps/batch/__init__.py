"""Cohort batch: enhance many volumes with one command, on this machine or a Dask cluster.

``iqt-enhance batch INPUTS OUTDIR --method M`` (:mod:`.command`) and :func:`run_batch`:

* **one Dask task per volume** (:func:`.worker.process_volume`) on a local cluster sized to the
  machine (:func:`.cluster.local_cluster_size`), an existing scheduler, or SLURM/PBS/SGE through
  dask-jobqueue; each worker runs one volume at a time with ``T`` threads, so workers × T never
  oversubscribes the cores;
* **model loaded once per worker**, cached by the model file's SHA-256 (:func:`.worker.cached_model`);
* **nothing lost, nothing half-made**: outputs are written atomically, their provenance sidecar
  after them, so a rerun skips exactly the volumes whose output and sidecar match; a bad input is
  recorded with its one-sentence error and does not stop the others; a worker that dies mid-volume
  is retried or reported;
* **report** ``OUTDIR/batch.csv`` and ``batch.json`` (:mod:`.report`).

Dask is imported inside the functions that need it.
"""
from .cluster import (EXAMPLE_SLURM_CONFIG, EXAMPLE_SLURM_GPU_CONFIG, available_cores, local_cluster_size,
                      make_jobqueue_cluster, read_cluster_config, start_local_cluster)
from .jobs import collect_inputs, plan_jobs, volume_stem
from .runner import EXIT_SOME_FAILED, LOCK_NAME, run_batch
from .worker import warm_worker

__all__ = ["EXAMPLE_SLURM_CONFIG", "EXAMPLE_SLURM_GPU_CONFIG", "EXIT_SOME_FAILED", "LOCK_NAME", "available_cores",
           "collect_inputs", "local_cluster_size", "make_jobqueue_cluster", "plan_jobs", "read_cluster_config",
           "run_batch", "start_local_cluster", "volume_stem", "warm_worker"]
