"""The one process pool: sweep's accuracy cases and scan's layers run through `run_parallel`.

Workers are spawned, never forked (torch and fork do not mix), and run torch on one thread each (one
core per worker). At most 2 × jobs tasks are queued at a time, so an interrupted run leaves little
submitted and unfinished."""
from __future__ import annotations

from typing import Callable, Hashable, Iterable


def worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def run_parallel(tasks: Iterable[tuple[Hashable, Callable, tuple]], jobs: int,
                 done: Callable[[Hashable, object], None], failed: Callable[[Hashable, BaseException], None]) -> None:
    """Run fn(*args) for each (key, fn, args) on `jobs` worker processes; done(key, result) or
    failed(key, exception) for each as it finishes (a task that raises, or whose worker died).
    Ctrl-C cancels what is queued and re-raises. concurrent.futures' BrokenProcessPool propagates
    when the pool breaks before a task could be submitted (the caller says what that means for it)."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    queue = list(tasks)
    queue.reverse()  # popped from the end: submitted in the order given
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=worker_init) as pool:
        pending: dict = {}
        try:
            while queue or pending:
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
        except KeyboardInterrupt:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
