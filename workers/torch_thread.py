"""One thread per process for torch work that would otherwise run on whichever thread a pool hands out.

Each thread that computes with torch keeps its own team of OpenMP workers. Once a process has more of
them than cores, libgomp stops spinning at its barriers, and every parallel region pays a wake-up: an
LLM forward took twice as long while another idle torch thread was alive (docs/engine.md, "CPU matrix
products"), an embedding 1.5 times (8.7 against 12.9 ms from a pool of 6 threads). Code called from
``asyncio.to_thread`` or Ray Serve's request threads therefore hands its torch work to this thread.
The batching engine needs none of this: it computes only on its own scheduler thread. One-off torch work
that must not leave workers behind in the calling thread runs in a thread that ends with it
(:func:`run_in_passing_thread`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")
THREAD_NAME = "tessera-torch"


@functools.cache
def _executor() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)


def on_torch_thread() -> bool:
    return threading.current_thread().name.startswith(THREAD_NAME)


def run_on_torch_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on the process's torch thread; directly when already on it (no deadlock)."""
    if on_torch_thread():
        return fn(*args, **kwargs)
    return _executor().submit(fn, *args, **kwargs).result()


async def on_torch_thread_async(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Await ``fn(*args, **kwargs)`` run on the process's torch thread."""
    return await asyncio.wrap_future(_executor().submit(fn, *args, **kwargs))


def run_in_passing_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a new thread that ends with the call, taking its OpenMP workers with it."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tessera-passing") as pool:
        return pool.submit(fn, *args).result()
