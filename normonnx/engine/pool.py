"""The one process pool: sweep's accuracy cases and scan's layers run through `run_parallel`.

Workers are spawned, never forked (torch and fork do not mix), and run torch on one thread each (one
core per worker) where torch is installed. At most 2 × jobs tasks are queued at a time, so an interrupted run leaves little
submitted and unfinished.

Interrupts belong to the parent alone: workers start with SIGINT blocked (the parent blocks it while it
spawns them, and a spawned process inherits the mask), so the terminal's Ctrl-C, which reaches the whole
process group, never prints a worker's traceback; each worker leads a process group of its own. On
Ctrl-C or SIGTERM the parent stops every worker's group (SIGTERM, then SIGKILL after a grace period),
children included, and re-raises: a second Ctrl-C is never needed."""
from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any, Callable, Hashable, Iterable, Iterator

STOP_GRACE_S = 2.0  # a worker asked to stop has this long to run its `finally` blocks before SIGKILL


def worker_init(torch_threads: bool = True) -> None:
    os.setpgrp()  # its own group: stopping it stops whatever it started too

    def stop(signum, frame):  # the parent asks: leave through the finally blocks (temporary folders)
        raise SystemExit(128 + signum)

    # stopped while still starting (importing torch: seconds), a worker has nothing to clean up and ends as
    # SIGTERM's default ends it; a SystemExit raised here would be logged by concurrent.futures as a traceback
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from ..core.errors import module_missing

    if torch_threads and not module_missing("torch"):  # torch work here: one thread per worker
        import torch

        torch.set_num_threads(1)
    signal.signal(signal.SIGTERM, stop)


def stop_workers(procs: list, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM each worker's process group (multiprocessing Process objects), wait up to `grace` seconds,
    then SIGKILL what is left."""
    for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        left = [p for p in procs if p.is_alive()]
        for p in left:
            for kill in (os.killpg, os.kill):
                try:
                    kill(p.pid, sig)
                    break
                except (ProcessLookupError, PermissionError):
                    continue
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(p.is_alive() for p in left):
            time.sleep(0.05)


@contextlib.contextmanager
def spawning() -> Iterator[None]:
    """While workers are spawned: SIGINT blocked, so they start deaf to Ctrl-C (a spawned process inherits the
    mask), and Ctrl-C or SIGTERM held back until every one started here has its start-up data. Blocking the main
    thread alone is not enough: the signal can land on another thread, and Python then raises in the main thread
    at its next instruction, half-way through a launch; the worker reads an empty pipe and prints
    multiprocessing's traceback. A signal held back is handled, by the handler that was there, on the way out."""
    import threading

    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    held: list[int] = []
    before: dict[int, Any] = {}  # signal number -> its handler (Signals are ints)
    if threading.current_thread() is threading.main_thread():
        before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in before:
            signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if held:
            h = before[held[0]]
            if callable(h):
                h(held[0], None)  # normonnx's handler raises Interrupted here
            elif h == signal.SIG_DFL:
                os.kill(os.getpid(), held[0])


def run_parallel(tasks: Iterable[tuple[Hashable, Callable, tuple]], jobs: int,
                 done: Callable[[Hashable, object], None], failed: Callable[[Hashable, BaseException], None],
                 torch_threads: bool = True) -> None:
    """Run fn(*args) for each (key, fn, args) on `jobs` worker processes; done(key, result) or
    failed(key, exception) for each as it finishes (a task that raises, or whose worker died).
    torch_threads: each worker imports torch first (where installed) to pin it to one thread; False for tasks
    that never run torch, which then skip its import (seconds per worker).
    Ctrl-C or SIGTERM stops every worker and re-raises. concurrent.futures' BrokenProcessPool propagates
    when the pool breaks before a task could be submitted (the caller says what that means for it)."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    queue = list(tasks)
    queue.reverse()  # popped from the end: submitted in the order given
    before = {p.pid for p in mp.active_children()}
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=worker_init,
                               initargs=(torch_threads,))
    pending: dict = {}
    try:
        while queue or pending:
            with spawning():  # workers are spawned by submit
                while queue and len(pending) < jobs * 2:
                    key, fn, args = queue.pop()
                    pending[pool.submit(fn, *args)] = key
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                key = pending.pop(fut)
                try:
                    result = fut.result()
                except Exception as e:
                    failed(key, e)
                    continue
                done(key, result)
    except BaseException:  # Ctrl-C, SIGTERM, or the caller's own failure: no worker outlives the pool
        pool.shutdown(wait=False, cancel_futures=True)
        stop_workers([p for p in mp.active_children() if p.pid not in before])
        raise
    pool.shutdown(wait=True)
