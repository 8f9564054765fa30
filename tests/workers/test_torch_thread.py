"""Torch work handed to the process's torch thread runs there, on one thread, and comes back with its result
or its exception; a call made from that thread runs at once instead of waiting for itself."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tessera.workers.torch_thread import on_torch_thread, on_torch_thread_async, run_in_passing_thread, run_on_torch_thread


def _thread_name() -> str:
    return threading.current_thread().name


def test_work_from_many_threads_runs_on_one_torch_thread():
    names = set()
    threads = [threading.Thread(target=lambda: names.add(run_on_torch_thread(_thread_name))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(names) == 1 and next(iter(names)).startswith("tessera-torch")
    assert not on_torch_thread()


def test_a_call_from_the_torch_thread_runs_directly():
    assert run_on_torch_thread(lambda: run_on_torch_thread(_thread_name)).startswith("tessera-torch")


def test_results_keyword_arguments_and_errors_come_back():
    assert run_on_torch_thread(divmod, 7, 2) == (3, 1)
    assert run_on_torch_thread(sorted, [3, 1, 2], reverse=True) == [3, 2, 1]
    with pytest.raises(ZeroDivisionError):
        run_on_torch_thread(divmod, 1, 0)


def test_the_async_form_awaits_the_same_thread():
    async def main():
        return await asyncio.gather(*(on_torch_thread_async(_thread_name) for _ in range(3)))

    assert set(asyncio.run(main())) == {run_on_torch_thread(_thread_name)}


def test_a_passing_thread_is_gone_once_the_call_returns():
    seen = run_in_passing_thread(lambda: threading.current_thread())
    assert seen is not threading.current_thread() and not seen.is_alive()
    assert run_in_passing_thread(divmod, 7, 2) == (3, 1)
