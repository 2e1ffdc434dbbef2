"""Work that is independent per prompt, spread over the cores: one thread per core, each running its
operators on one intra-op thread.

Splitting each matrix product of one prompt over two intra-op threads leaves much of the work to
synchronisation at these sizes (a 4096 x 256 x 128 product takes well under a millisecond); giving each
core whole prompts keeps it busy.

torch keeps the intra-op thread count per thread (OpenMP's setting of the calling thread); a thread takes
the process-wide value when it first asks for it. Inside :func:`prompt_threads` the calling thread runs on
one intra-op thread (an OpenMP team of its own, idle and spinning on a core between operators, would slow
the other threads) and :func:`map_prompts` runs the first run of prompts itself, the others in worker
threads that set their count to one when they start. ``torch.set_num_threads`` also sets the process-wide
value, which is put back each time, so no other thread is changed (one that first uses torch during the
few microseconds in between would start with one intra-op thread).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import torch

from samadapt.models.accel.cpu import keep_freed_memory

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

T = TypeVar("T")

_LOCK = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}
_local = threading.local()  # .threads: the intra-op threads the caller had when it entered prompt_threads


def _one_thread() -> None:
    """A worker's start: its intra-op threads set to one. torch gives a thread the process-wide count when it
    first asks for it, which would undo an earlier setting: asking first makes the setting stay."""
    torch.get_num_threads()
    torch.set_num_threads(1)


def _pool(workers: int) -> ThreadPoolExecutor:
    """``workers`` threads with one intra-op thread each, all started."""
    with _LOCK:
        if workers not in _pools:
            mine = torch.get_num_threads()
            pool = ThreadPoolExecutor(workers, thread_name_prefix="samadapt-prompts", initializer=_one_thread)
            started = threading.Barrier(workers)
            list(pool.map(lambda _: started.wait(timeout=60), range(workers)))  # every thread exists
            torch.set_num_threads(mine)  # the process-wide value (and this thread's) as it was
            _pools[workers] = pool
        return _pools[workers]


@contextmanager
def prompt_threads() -> Iterator[int]:
    """Within: this thread runs operators on one intra-op thread and :func:`map_prompts` spreads its runs over
    as many threads as it had, itself included. Yields that count."""
    threads = getattr(_local, "threads", None)
    if threads is not None:  # nested: already set up
        yield threads
        return
    threads = torch.get_num_threads()
    keep_freed_memory()  # the workers' blocks reused, not faulted in anew for every prompt
    _local.threads = threads
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield threads
    finally:
        del _local.threads
        if threads > 1:
            torch.set_num_threads(threads)


def map_prompts(fn: Callable[[int], T], n: int, split: bool = True) -> list[T]:
    """``[fn(i) for i in range(n)]``, the indices cut into contiguous runs, one per intra-op thread of the
    caller (inside :func:`prompt_threads`: one per thread it had), each on one intra-op thread; in the
    caller alone when it has one or ``split`` is False (work too small to pay for the hand-over).

    ``fn`` must not depend on the order of the calls; the calls see the caller's gradient and inference mode.
    """
    inside = getattr(_local, "threads", None)
    workers = min(n, inside if inside is not None else torch.get_num_threads()) if split else 1
    if workers <= 1:
        return [fn(i) for i in range(n)]
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def run(indices: range) -> list[T]:
        with torch.inference_mode() if inference else torch.set_grad_enabled(grad):
            return [fn(i) for i in indices]

    runs = [range(k * n // workers, (k + 1) * n // workers) for k in range(workers)]
    if inside is None:  # this thread keeps its intra-op threads: all runs go to workers
        return [r for part in _pool(workers).map(run, runs) for r in part]
    others = [_pool(workers - 1).submit(run, indices) for indices in runs[1:]]
    first = run(runs[0])
    return first + [r for future in others for r in future.result()]
