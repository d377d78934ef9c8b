"""Where a batch runs: a local Dask cluster sized to the machine, an existing scheduler, or a
SLURM/PBS/SGE cluster through dask-jobqueue.  Dask is imported only here, inside the functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from IQTEnhanceApps.common.runtime import available_cores
from IQTEnhanceLib.errors import InputError, require_module

CLUSTER_KINDS = ("slurm", "pbs", "sge")
# A worker holds the model, one LQ volume, the HQ output (factor × larger) and the method's
# working copies; 2 GiB per worker is enough for a 1 mm whole brain with every method we ship.
MEMORY_PER_WORKER = 2 * 1024 ** 3
DASK_INSTALL = "pip install 'dask[distributed]'"
# Dask's dashboard has no authentication and its pages show input file names: loopback only unless
# the user opens it with --dashboard-address.
DEFAULT_DASHBOARD = "127.0.0.1:8787"


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


def _dashboard(client) -> str:
    import importlib.util

    link = getattr(client, "dashboard_link", None)
    if not link:
        return "no dashboard"
    if importlib.util.find_spec("bokeh") is None:
        return f"{link} (needs `pip install bokeh` to show)"
    return link


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
    from IQTEnhanceLib.devices import cuda_available

    return cuda_available()


class _Both:
    def __init__(self, client, cluster):
        self.client, self.cluster = client, cluster

    def close(self):
        self.client.close()
        self.cluster.close()
