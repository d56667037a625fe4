"""Which Dask cluster the flows run on, and what its workers offer.

- `FPN_GEO_DASK_ADDRESS` (or `--dask-address`): connect to that scheduler with `address=`.
- otherwise an embedded cluster: `dask_cuda.LocalCUDACluster` (one worker per GPU, each advertising
  the resource GPU=1) when CUDA GPUs and dask-cuda are both there, else a `LocalCluster` of worker
  processes that run one task at a time, each with its share of the cores as torch threads
  (`FPN_GEO_DASK_WORKERS`, default: one per 4 cores, at least 1, at most 8).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import dask
from prefect.context import FlowRunContext
from prefect_dask import DaskTaskRunner

ADDRESS_ENV = "FPN_GEO_DASK_ADDRESS"
WORKERS_ENV = "FPN_GEO_DASK_WORKERS"
# Torch's intra-op threads speed a convolution up well to about 4; beyond that, more processes do better.
CORES_PER_WORKER = 4

# Dask's nanny starts every worker with MALLOC_TRIM_THRESHOLD_=65536. Setting it turns off glibc's dynamic mmap
# threshold, so each of torch's large CPU buffers becomes a fresh mmap and page faults: a ResNet-50 window took
# 1.25 s in a worker against 0.56 s in the CLI, with the same threads. Workers this process starts go without it
# (a value the user configured stays); docker/dask.yaml does the same for `dask worker` processes.
dask.config.update_defaults({"distributed": {"nanny": {"pre-spawn-environ": {"MALLOC_TRIM_THRESHOLD_": None}}}})


def cuda_gpus() -> int:
    """CUDA GPUs for a LocalCUDACluster; 0 without dask-cuda, and asked of NVML, not torch (seconds to import)."""
    if not importlib.util.find_spec("dask_cuda"):
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # "" or "-1" hide every GPU
        return len([d for d in visible.split(",") if d.strip() not in ("", "-1")])
    try:
        from dask_cuda.utils import get_gpu_count

        return get_gpu_count()
    except Exception:  # no driver, no NVML: no GPUs to use
        return 0


def task_runner(address: str | None = None, n_workers: int | None = None) -> DaskTaskRunner:
    """A DaskTaskRunner for the flows; see the module docstring for how the cluster is chosen."""
    address = address or os.environ.get(ADDRESS_ENV) or None
    if address:
        return DaskTaskRunner(address=address)
    local = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    if cuda_gpus():
        return DaskTaskRunner(cluster_class=local_cuda_cluster, cluster_kwargs={**local, "resources": {"GPU": 1}})
    n, threads = cpu_worker_shape(n_workers or int(os.environ.get(WORKERS_ENV) or 0) or None)
    # One task at a time per worker (threads_per_worker=1), each using `threads` cores through torch.
    env = {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return DaskTaskRunner(
        cluster_class=local_cluster,
        cluster_kwargs={**local, "n_workers": n, "threads_per_worker": 1, "processes": True, "env": env},
    )


def cpu_worker_shape(n_workers: int | None = None, cores: int | None = None) -> tuple[int, int]:
    """(worker processes, torch threads each) for a CPU LocalCluster.

    On 2 cores one process with 2 torch threads is as fast as two with one (0.56 against 0.60 s a ResNet-50
    window) and starts, imports and holds the model once instead of twice.
    """
    cores = cores or os.cpu_count() or 1
    n = n_workers or max(1, min(8, cores // CORES_PER_WORKER))
    return n, max(1, cores // n)


def _prefect_env(kwargs: dict) -> dict:
    """Hand the flow's Prefect API URL to the worker processes.

    Without it, a flow run with no PREFECT_API_URL (Prefect's ephemeral server) would make every worker start
    its own temporary server (seconds each) and report task runs there, where nobody sees them.
    """
    from prefect.client.orchestration import get_client

    env = {"PREFECT_API_URL": str(get_client(sync_client=True).api_url).rstrip("/"), **kwargs.pop("env", {})}
    return {**kwargs, "env": env}


def local_cluster(**kwargs):
    """A Dask LocalCluster whose workers see this process's Prefect settings."""
    from distributed import LocalCluster

    return LocalCluster(**_prefect_env(kwargs))


def local_cuda_cluster(**kwargs):
    """A dask-cuda LocalCUDACluster (one worker per GPU) with this process's Prefect settings."""
    from dask_cuda import LocalCUDACluster

    return LocalCUDACluster(**_prefect_env(kwargs))


def current_client():
    """The Dask client of the running flow's DaskTaskRunner (starting its cluster if not yet started)."""
    ctx = FlowRunContext.get()
    runner = ctx.task_runner if ctx else None
    if not isinstance(runner, DaskTaskRunner):
        raise RuntimeError(f"this flow needs a DaskTaskRunner, but runs with {type(runner).__name__}")
    return runner.client


def describe_workers(client) -> tuple[int, int]:
    """(workers, workers that advertise a GPU resource)."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return len(workers), sum(1 for w in workers if (w.get("resources") or {}).get("GPU", 0) >= 1)


def gpu_annotation(use_gpu: bool):
    """`dask.annotate(resources={"GPU": 1})` when the workers advertise GPUs: one inference task per GPU at a time."""
    return dask.annotate(resources={"GPU": 1}) if use_gpu else contextlib.nullcontext()
