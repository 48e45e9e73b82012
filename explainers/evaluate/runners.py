"""Three ways to run the jobs, each yielding ``(job, rows)`` as images finish (in any order):
in this process, in local worker processes (``--workers N``), or on a Ray actor pool
(``--ray [ADDRESS]``). Every worker loads the model once; the driver alone writes rows.csv."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any

import torch

from ..errors import UserError
from ..models import ModelAdapter
from .worker import Job, Worker, WorkerConfig, WorkerStartError

Outcome = tuple[Job, list[dict[str, Any]]]
# Environment variables a worker needs to load models as the driver does (offline, local folders).
FORWARDED_ENV = (
    "OMP_WAIT_POLICY",  # explainers/_threads.py: set before torch loads, in every worker too
    "GOMP_SPINCOUNT",
    "SALIENCY_LAB_RUNTIME",  # models/runtime.py: the forward-only runtime and its cache
    "SALIENCY_LAB_CACHE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HOME",
    "TOKENIZERS_PARALLELISM",
    "SALIENCY_LAB_ALLOW_LOCAL_MODELS",
)
LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024  # rows are a few kB: Ray's default (30 % of RAM) is wasted


def run_here(
    jobs: Sequence[Job], config: WorkerConfig, model: str | ModelAdapter, info: dict[str, Any]
) -> Generator[Outcome, None, None]:
    """In this process (``--workers 1``); torch's thread count is restored afterwards."""
    threads_before = torch.get_num_threads()
    try:
        worker = Worker(config, model if isinstance(model, ModelAdapter) else None)
        info["workers"] = [worker.describe()]
        for job in jobs:
            yield worker.run(job)
            info["workers"] = [worker.describe()]
    finally:
        torch.set_num_threads(threads_before)


# --- local processes -------------------------------------------------------------------------
_worker: Worker | None = None
_start_error: str | None = None


def _start_process(config: WorkerConfig, counter: Any) -> None:
    """Process initializer: load the model once. With several CUDA GPUs and no index given,
    the workers take the GPUs in turn."""
    global _worker, _start_error
    with counter.get_lock():
        slot = counter.value
        counter.value += 1
    device = config.device
    if device == "cuda" and torch.cuda.device_count() > 1:
        device = f"cuda:{slot % torch.cuda.device_count()}"
    try:
        _worker = Worker(replace(config, device=device))
    except UserError as error:
        _start_error = str(error)


def _run_in_process(job: Job) -> tuple[Outcome, dict[str, Any]]:
    if _worker is None:
        raise WorkerStartError(_start_error or "the worker process could not start")
    return _worker.run(job), {"pid": os.getpid(), **_worker.describe()}


def run_processes(
    jobs: Sequence[Job], config: WorkerConfig, workers: int, info: dict[str, Any]
) -> Generator[Outcome, None, None]:
    """In ``workers`` local processes (spawned: CUDA and torch's threads do not survive a fork)."""
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_start_process, initargs=(config, context.Value("i", 0))
    )
    seen: dict[int, dict[str, Any]] = {}
    try:
        pending: set[Future] = {pool.submit(_run_in_process, job) for job in jobs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    outcome, where = future.result()
                except BrokenProcessPool:
                    raise UserError(
                        "a worker process died (out of memory?); the rows written so far are kept: "
                        "rerun the same command to resume"
                    ) from None
                seen[where["pid"]] = where
                info["workers"] = list(seen.values())
                yield outcome
    except BaseException:
        # Interrupted (Ctrl-C, an error, the caller stopped early): the images in flight are
        # abandoned, so end their processes now rather than wait minutes for them to finish.
        # (ProcessPoolExecutor has no public way to do so before Python 3.14's terminate_workers.)
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --- Ray -------------------------------------------------------------------------------------
class RayWorker:
    """A Ray actor's body (wrapped with ``ray.remote`` at run time, so Ray stays optional)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.worker: Worker | None = None
        self.error: str | None = None
        try:
            self.worker = Worker(config)
        except UserError as error:
            self.error = str(error)

    def ready(self) -> tuple[str | None, dict[str, Any]]:
        """(the start error or None, where the actor runs)."""
        if self.worker is None:
            return self.error, {}
        return None, {"pid": os.getpid(), "node": _node(), **self.worker.describe()}

    def run(self, job: Job) -> Outcome:
        assert self.worker is not None  # ready() was checked before any job was sent
        return self.worker.run(job)

    def describe(self) -> dict[str, Any]:
        assert self.worker is not None
        return {"pid": os.getpid(), "node": _node(), **self.worker.describe()}


def _node() -> str:
    import socket

    return socket.gethostname()


def import_ray():
    """Ray, or UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'ray>=2.9' (it is in requirements-dev.txt)") from None
    return ray


def run_ray(
    jobs: Sequence[Job],
    config: WorkerConfig,
    address: str | None,
    actors: int | None,
    threads: int | None,
    info: dict[str, Any],
) -> Generator[Outcome, None, None]:
    """On a Ray actor pool. ``address``: None or "local" starts a local Ray (unless this process
    is already connected, e.g. a notebook that called ``ray.init``); otherwise that cluster's
    address ("auto", "ray://host:10001", "host:6379"). One GPU per actor where the cluster has
    GPUs and the device allows CUDA; otherwise ``threads`` CPUs per actor."""
    ray = import_ray()
    from ray.util import ActorPool

    started_here = False
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    if not ray.is_initialized():
        try:
            if address in (None, "", "local"):
                # address="local": always a new local Ray, never a cluster some earlier run left
                # registered in /tmp/ray (ray.init() alone would try to join it)
                ray.init(
                    address="local",
                    include_dashboard=False,
                    object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                    logging_level=logging.WARNING,
                    log_to_driver=True,
                )
            else:
                # A remote cluster gets this package shipped with the job; its Python must hold
                # the requirements (torch, transformers, ...).
                package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
                ray.init(
                    address=address,
                    logging_level=logging.WARNING,
                    runtime_env={"py_modules": [package], "env_vars": env},
                )
        except Exception as error:  # noqa: BLE001 - Ray's many connection errors -> one sentence
            raise UserError(
                f"Ray could not start or connect ({address or 'local'}): {' '.join(str(error).split())[:300]}"
            ) from None
        started_here = True
    handles = []
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        use_gpu = config.device.startswith("cuda") or (config.device == "auto" and gpus > 0)
        if use_gpu and gpus == 0:
            raise UserError("the device cuda was asked for, but the Ray cluster has no GPU; use auto or cpu")
        threads = threads or 1
        count = actors or (gpus if use_gpu else max(1, int(resources.get("CPU", 1)) // threads))
        device = "cuda" if use_gpu else "cpu"  # Ray hides all but the actor's GPU: cuda is cuda:0 there
        actor_class = ray.remote(RayWorker).options(
            num_cpus=threads, num_gpus=1 if use_gpu else 0, runtime_env={"env_vars": env} if env else None
        )
        handles = [actor_class.remote(replace(config, device=device, threads=threads)) for _ in range(count)]
        started = ray.get([h.ready.remote() for h in handles])
        errors = [e for e, _ in started if e]
        if errors:
            raise UserError(errors[0])
        info["workers"] = [where for _, where in started]
        info["ray"] = {
            "address": address or "local",
            "actors": count,
            "gpus_per_actor": int(use_gpu),
            "cpus_per_actor": threads,
        }
        pool = ActorPool(handles)
        for job in jobs:
            pool.submit(lambda actor, j: actor.run.remote(j), job)
        while pool.has_next():
            try:
                yield pool.get_next_unordered()
            except ray.exceptions.RayActorError as error:
                raise UserError(
                    f"a Ray actor died ({' '.join(str(error).split())[:200]}); the rows written so "
                    "far are kept: rerun the same command to resume"
                ) from None
        info["workers"] = ray.get([h.describe.remote() for h in handles])  # with their peak memory
    finally:
        for handle in handles:
            ray.kill(handle)
        if started_here:
            ray.shutdown()
