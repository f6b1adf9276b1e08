"""Persistent worker processes for a single-process host (ComfyUI): one per device, a process group among the
workers only, jobs in and latents out through queues.

The host process stays a plain process: `WorkerPool.sample(...)` sends the job to every worker, relays
rank 0's per-step reports to the host's callback (progress, preview), and returns rank 0's latents.
- Cancel: when the host callback raises (ComfyUI's interrupt), a shared event is set; every worker checks it
  through one tiny all-reduce after each step, so all ranks stop at the same step (within one step).
- Crash: a worker that exits is noticed within half a second (while idle: at the next `sample`); the pool is
  stopped and the error names the worker and its exit code; the `sample` after it starts a fresh pool. A worker whose peers vanish gets a `ParallelError` from the
  bounded collectives and exits.
- Hang: a worker that stops answering (stuck, or stopped with SIGSTOP) leaves its peers waiting in a
  collective; they give up after `timeout_s` and report it, and the host then names the worker(s) that did
  not answer and the timeout, kills them and stops the pool (a peer that gave up and exited is not reported
  as a crash).
- Stop: `stop()`, or the pool being dropped (the model unloaded) or the host exiting (a `weakref.finalize`),
  ends every worker, politely then by force; an idle worker whose host died exits by itself.
Workers are `torch.multiprocessing` "spawn" processes; the host's own main script is hidden from them while
they start (they need only `mova_model`, found through the pack folder on `sys.path`).
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import socket
import sys
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch

from .layout import ParallelError, layout_for
from .portable import from_portable, to_portable

logger = logging.getLogger(__name__)

PACK_ROOT = str(Path(__file__).resolve().parents[2])
PACKAGE = __name__.rsplit(".parallel.", 1)[0]
"""This process's name for the `mova_model` package (inside ComfyUI: `<pack folder>.mova_model`)."""
START_TIMEOUT_S = 300.0
HOST_MARGIN_S = 60.0
"""How much longer than `timeout_s` the host waits for any message before it gives up on silent workers."""
HANG_GRACE_S = 10.0
"""After one worker gave up waiting for its peers, how long the others get to report before they are called
hung (peers blocked in the same collective time out together; capped by `timeout_s`)."""


class _NoAnswer(Exception):
    """Raised by `WorkerPool._next_message` when its deadline passed; `silent`: the ranks that did not report."""

    def __init__(self, silent: list) -> None:
        super().__init__(silent)
        self.silent = silent


@dataclass(frozen=True)
class WorkerSpec:
    """devices: one torch device per worker ("cuda:0", "cuda:1" or "cpu", "cpu"); split: "cfg", "ulysses" or
    "cfg+ulysses"; timeout_s: bound on every collective; threads: CPU threads per worker (0: torch's default)."""

    devices: Tuple[str, ...]
    split: str = "cfg"
    timeout_s: float = 600.0
    threads: int = 0
    cfg_degree: int = 2

    def validate(self) -> None:
        if len(self.devices) < 2:
            raise ParallelError(f"multi-GPU needs at least 2 devices, got {len(self.devices)} ({', '.join(self.devices)})")
        for device in self.devices:
            try:
                kind = torch.device(device).type
            except RuntimeError:
                raise ParallelError(f"device {device!r} is not a torch device (use cuda:0, cuda:1, ... or cpu)") from None
            if kind not in ("cuda", "cpu"):
                raise ParallelError(f"device {device!r}: only cuda:N and cpu workers are supported")
        gpus = [torch.device(d).index or 0 for d in self.devices if torch.device(d).type == "cuda"]
        twice = sorted({i for i in gpus if gpus.count(i) > 1})
        if twice:  # NCCL refuses two ranks on one GPU ("Duplicate GPU detected"), deep inside the first collective
            raise ParallelError(f"each worker needs its own GPU: {', '.join(f'cuda:{i}' for i in twice)} is listed more "
                                f"than once in {', '.join(self.devices)} (cuda = cuda:0)")
        for device in self.devices:
            kind = torch.device(device).type
            if kind == "cuda" and (not torch.cuda.is_available() or (torch.device(device).index or 0) >= torch.cuda.device_count()):
                raise ParallelError(f"device {device!r} does not exist here ({torch.cuda.device_count()} CUDA devices)")
        kinds = {torch.device(d).type for d in self.devices}
        if len(kinds) > 1:
            raise ParallelError("all workers must be CUDA devices or all CPU (NCCL and gloo do not mix)")
        if self.timeout_s <= 0:
            raise ParallelError(f"timeout must be more than 0 seconds, got {self.timeout_s}")
        self.layout()

    def layout(self):
        """The `ParallelLayout` of these workers (raises `ParallelError` for an impossible split)."""
        return layout_for(self.split, len(self.devices), self.cfg_degree)


class WorkerCancelled(Exception):
    """Raised inside a worker when every rank agreed to stop."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _host_main_hidden():
    """Spawned children re-run the parent's main script unless it is hidden; the host's must not run there."""
    main = sys.modules.get("__main__")
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if main is not None and name in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__spec__ = None
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)
            if "__spec__" not in saved:
                main.__dict__.pop("__spec__", None)


class WorkerPool:
    """Worker processes for one `WorkerSpec`; started on first use, restarted after a crash."""

    def __init__(self, spec: WorkerSpec) -> None:
        spec.validate()
        self.spec = spec
        self.procs: list = []
        self.jobs: list = []
        self.results = None
        self.stop_flag = None
        self.last_crash: Optional[str] = None
        # stops the workers when the pool is dropped (the model unloaded) and when the host exits
        self._finalizer = weakref.finalize(self, WorkerPool._stop_processes, self.procs, self.jobs)

    # -- lifecycle ------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return bool(self.procs) and all(p.is_alive() for p in self.procs)

    def start(self) -> None:
        """Spawn the workers and wait until each has joined the process group."""
        if self.running:
            return
        dead = [(rank, p) for rank, p in enumerate(self.procs) if not p.is_alive()]
        if dead:  # died between runs (killed, out of memory): said once, like a crash while working
            raise self._crash_error(*dead[0], "idle")
        self.stop()
        if PACK_ROOT not in sys.path:
            sys.path.append(PACK_ROOT)
        worker_main = importlib.import_module("mova_model.parallel.workers").worker_main
        ctx = torch.multiprocessing.get_context("spawn")
        port = _free_port()
        self.results = ctx.Queue()
        self.stop_flag = ctx.Event()
        threads = self.spec.threads or torch.get_num_threads()
        world = len(self.spec.devices)
        with _host_main_hidden():
            for rank, device in enumerate(self.spec.devices):
                jobs = ctx.Queue()
                proc = ctx.Process(target=worker_main, name=f"mova-worker-{rank}", daemon=True,
                                   args=(rank, world, port, device, self.spec.split, self.spec.cfg_degree,
                                         self.spec.timeout_s, threads, jobs, self.results, self.stop_flag))
                proc.start()
                self.procs.append(proc)
                self.jobs.append(jobs)
        ready = set()
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(ready) < world:
            try:
                kind, rank, *rest = self._next_message(deadline, "starting")
            except _NoAnswer as silent:
                names = ", ".join(self.describe_worker(r) for r in silent.silent if r not in ready)
                self.stop(hung=tuple(silent.silent))
                raise ParallelError(f"MOVA {names} did not start within {START_TIMEOUT_S:g} s; all workers were "
                                    "stopped and will be restarted on the next run") from None
            if kind == "ready":
                ready.add(rank)
            elif kind == "error":
                self.stop()
                raise ParallelError(f"MOVA worker {rank} could not start: {rest[0]}")
        logger.info("MOVA workers ready: %s on %s", layout_for(self.spec.split, world, self.spec.cfg_degree).describe(),
                    ", ".join(self.spec.devices))

    def stop(self, hung: tuple = ()) -> None:
        """End every worker (a stop message, then terminate/kill after a grace period; the `hung` ranks are
        killed at once, since a stopped or stuck process does not react to the others). Safe to call twice."""
        for rank in hung:
            if rank < len(self.procs) and self.procs[rank].is_alive():
                self.procs[rank].kill()
        WorkerPool._stop_processes(self.procs, self.jobs)
        self.procs.clear()
        self.jobs.clear()

    @staticmethod
    def _stop_processes(procs: list, jobs: list) -> None:
        for q in jobs:
            try:
                q.put_nowait(None)
            except Exception:  # noqa: BLE001 - a closed queue means the worker is gone already
                pass
        deadline = time.monotonic() + 10.0
        for proc in procs:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5.0)

    def describe_worker(self, rank: int) -> str:
        proc = self.procs[rank] if rank < len(self.procs) else None
        return f"worker {rank} ({self.spec.devices[rank]}, pid {proc.pid if proc is not None else '?'})"

    def _crash_error(self, rank: int, proc, doing: str) -> ParallelError:
        """Stop the pool after worker `rank` exited while `doing`; the error names it and its exit code."""
        message = (f"MOVA {self.describe_worker(rank)} exited with code {proc.exitcode} while {doing}; all workers "
                   "were stopped and will be restarted on the next run")
        self.last_crash = message
        self.stop()
        return ParallelError(message)

    def _next_message(self, deadline: float, doing: str, reported: frozenset = frozenset()):
        """The next message from any worker. A worker that exits without having `reported` is a crash
        (`ParallelError`, the pool stopped); past `deadline`, `_NoAnswer` lists the ranks not `reported`."""
        while True:
            try:
                return self.results.get(timeout=0.5)
            except queue.Empty:
                pass
            dead = [(rank, p) for rank, p in enumerate(self.procs) if not p.is_alive() and rank not in reported]
            if dead:
                raise self._crash_error(*dead[0], doing)
            if time.monotonic() > deadline:
                raise _NoAnswer([rank for rank in range(len(self.procs)) if rank not in reported])

    # -- jobs -----------------------------------------------------------------------------------------------
    def sample(self, pipeline, conditioning, seed: int, steps: int, guidance, held=None,
               on_step: Optional[Callable] = None, noise=None, schedule=None, init=None, denoise: float = 1.0,
               audio_denoise: Optional[float] = None):
        """Run `pipeline.sample(conditioning, ...)` on the workers; rank 0's `JointLatents` (on the CPU).
        `schedule` / `init` / `denoise` / `audio_denoise`: as `MovaPipeline.sample` (solver, sigmas, restyle).

        `on_step(StepInfo)` runs here for every step of rank 0; if it raises, every worker stops at the same
        step and the exception is re-raised here."""
        from ..sampling.sampler import StepInfo

        self.start()
        job = to_portable({"checkpoint": str(pipeline.checkpoint.root), "dtype": str(pipeline.dtype).replace("torch.", ""),
                           "memory": pipeline.memory, "lora": pipeline.lora, "conditioning": conditioning,
                           "seed": int(seed), "steps": int(steps), "guidance": guidance, "held": held, "noise": noise,
                           "schedule": schedule, "init": init, "denoise": float(denoise), "audio_denoise": audio_denoise})
        self.stop_flag.clear()
        for q in self.jobs:
            q.put(job)
        world = len(self.procs)
        finished, errors, result, raised = set(), [], None, None
        gave_up_at, last_step = None, None
        while len(finished) < world:
            if gave_up_at is None:
                deadline = time.monotonic() + self.spec.timeout_s + HOST_MARGIN_S
            else:  # a worker gave up waiting for its peers: the silent ones are hung, not slow
                deadline = gave_up_at + min(HANG_GRACE_S, self.spec.timeout_s)
            try:
                kind, rank, *rest = self._next_message(deadline, "sampling", frozenset(finished))
            except _NoAnswer as silent:
                raise self._hang_error(silent.silent, errors, last_step) from None
            if kind == "step":
                last_step = rest[0]
            if kind == "step" and raised is None and on_step is not None:
                index, total, expert, t_video, t_audio, video, audio, passes = rest
                try:
                    on_step(StepInfo(index=index, total=total, expert=expert, video_timestep=t_video,
                                     audio_timestep=t_audio, video_latents=video, audio_latents=audio, passes=passes))
                except BaseException as exc:  # noqa: BLE001 - re-raised below once every worker stopped
                    raised = exc
                    self.stop_flag.set()
            elif kind == "done":
                finished.add(rank)
                if rank == 0:
                    result = from_portable(rest[0], PACKAGE)
            elif kind == "cancelled":
                finished.add(rank)
            elif kind == "error":
                finished.add(rank)
                errors.append((rank, rest[0], rest[1]))
                if rest[1] and gave_up_at is None:
                    gave_up_at = time.monotonic()
        self.stop_flag.clear()
        if errors:
            if any(fatal for _, _, fatal in errors):
                self.stop()
            rank, message, _ = sorted(errors)[0]
            if message.startswith("InputError: "):  # a bad setting: the same message as without workers
                from ..sampling.pipeline import InputError

                raise InputError(message[len("InputError: "):])
            raise ParallelError(message if message.startswith("MOVA") else f"MOVA worker {rank}: {message}")
        if raised is not None:
            raise raised
        if result is None:
            raise ParallelError("MOVA workers finished without a result from worker 0")
        return result


    def _hang_error(self, silent: list, errors: list, last_step) -> ParallelError:
        """Stop the pool (killing the silent workers) and say which worker did not answer, within which timeout."""
        names = " and ".join(self.describe_worker(rank) for rank in silent)
        if errors:
            waited = ", ".join(f"worker {rank}" for rank, _, _ in sorted(errors))
            why = (f"did not answer within the {self.spec.timeout_s:g} s timeout ({waited} gave up waiting for it: "
                   f"{sorted(errors)[0][1]})")
        else:
            why = f"did not answer within {self.spec.timeout_s + HOST_MARGIN_S:g} s (the {self.spec.timeout_s:g} s timeout " \
                  f"and a {HOST_MARGIN_S:g} s margin)"
        done = f" after step {last_step + 1}" if last_step is not None else ""
        message = (f"MOVA {names} {why} while sampling{done}; it was killed and all workers were stopped; they will "
                   "be restarted on the next run")
        self.last_crash = message
        self.stop(hung=tuple(silent))
        return ParallelError(message)


def worker_main(rank: int, world: int, port: int, device: str, split: str, cfg_degree: int, timeout_s: float,
                threads: int, jobs, results, stop_flag) -> None:
    """One worker process: join the group, then run jobs until a None job (or a broken group)."""
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s mova-worker-{rank} %(name)s: %(message)s")
    from .context import init_parallel

    try:
        torch.set_num_threads(max(1, int(threads)))
        torch_device = torch.device(device)
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
        context = init_parallel(layout_for(split, world, cfg_degree), rank, world, torch_device, timeout_s,
                                f"tcp://127.0.0.1:{port}")
    except Exception as exc:  # noqa: BLE001 - reported to the host, which stops the pool
        results.put(("error", rank, f"{type(exc).__name__}: {exc}", True))
        return
    results.put(("ready", rank))
    pipelines = {}
    parent = os.getppid()
    try:
        while True:
            try:
                job = jobs.get(timeout=2.0)
            except queue.Empty:
                if os.getppid() != parent:  # the host died without stopping us
                    break
                continue
            if job is None:
                break
            fatal = _run_job(from_portable(job), rank, torch_device, context, pipelines, results, stop_flag)
            if fatal:
                break
    finally:
        context.close()


def _run_job(job: dict, rank: int, device: torch.device, context, pipelines: dict, results, stop_flag) -> bool:
    """Run one job; report done / cancelled / error. Returns True when the process group is unusable."""
    from ..sampling.pipeline import MovaPipeline

    try:
        key = (job["checkpoint"], job["dtype"], job["memory"])
        if key not in pipelines:
            pipelines.clear()
            pipelines[key] = MovaPipeline.from_pretrained(job["checkpoint"], device=device,
                                                          dtype=getattr(torch, job["dtype"]), memory=job["memory"])
        base = pipelines[key]
        pipe = MovaPipeline(base.checkpoint, device=device, dtype=base.dtype, cache=base.cache, lora=job["lora"],
                            memory=base.memory)
        pipe.parallel = context

        def on_step(info) -> None:
            if rank == 0:
                results.put(("step", 0, info.index, info.total, info.expert, info.video_timestep, info.audio_timestep,
                             info.video_latents.detach().cpu().clone(), None, info.passes))
            if context.agree_to_stop(stop_flag.is_set(), info.index):
                raise WorkerCancelled()

        latents = pipe.sample(job["conditioning"], seed=job["seed"], steps=job["steps"], guidance=job["guidance"],
                              noise=job["noise"], held=job["held"], callback=on_step, schedule=job.get("schedule"),
                              init=job.get("init"), denoise=job.get("denoise", 1.0),
                              audio_denoise=job.get("audio_denoise"))
        if rank == 0:
            results.put(("done", 0, to_portable(latents)))
        else:
            results.put(("done", rank, None))
        return False
    except WorkerCancelled:
        results.put(("cancelled", rank))
        return False
    except ParallelError as exc:
        results.put(("error", rank, str(exc), True))
        return True
    except Exception as exc:  # noqa: BLE001 - every rank raises the same input error; reported, pool kept
        logger.exception("job failed")
        results.put(("error", rank, f"{type(exc).__name__}: {exc}", False))
        return False
