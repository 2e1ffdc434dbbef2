"""Per-prompt work spread over threads: the results, the modes and the intra-op thread counts a caller relies on."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

from samadapt.models.accel.parallel import map_runs, prompt_threads


@pytest.fixture
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def test_runs_in_order_at_the_same_time(two_threads) -> None:
    both = threading.Barrier(2)

    def squares(run: range) -> list[int]:
        both.wait(timeout=10)  # each run waits for the other: they run at the same time
        return [i * i for i in run]

    with prompt_threads(7) as threads:
        assert threads == 2
        assert map_runs(squares, 7) == [[0, 1, 4], [9, 16, 25, 36]]


def test_each_run_has_one_intra_op_thread_and_other_threads_keep_theirs(two_threads) -> None:
    with prompt_threads(4):
        assert map_runs(lambda run: torch.get_num_threads(), 4) == [1, 1]
        assert map_runs(lambda run: (len(run), torch.get_num_threads()), 4, split=False) == [(4, 1)]  # the caller
        seen: list[int] = []
        fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        fresh.start()
        fresh.join()
        assert seen == [2]  # a thread started meanwhile takes the process-wide count, unchanged
    assert torch.get_num_threads() == 2
    assert map_runs(lambda run: (len(run), torch.get_num_threads()), 4) == [(4, 2)]  # outside: the caller, all threads


def test_calls_within_a_run_stay_in_its_thread(two_threads) -> None:
    def inner(run: range) -> list[tuple[threading.Thread, int]]:
        here = threading.current_thread()
        nested = map_runs(lambda r: (threading.current_thread(), len(r)), 4)
        assert nested == [(here, 4)]
        return nested

    with prompt_threads(4):
        outer = map_runs(inner, 4)
    assert len(outer) == 2 and outer[0][0][0] is threading.current_thread() and outer[1][0][0] is not outer[0][0][0]
    with prompt_threads(4):  # the caller spreads again after its run
        assert len({id(t) for t, _ in (r[0] for r in map_runs(inner, 4))}) == 2


def test_fewer_prompts_than_threads_keep_every_thread_on_each_operator(two_threads) -> None:
    with prompt_threads(1) as threads:
        assert threads == 2 and torch.get_num_threads() == 2
        assert map_runs(lambda run: (threading.current_thread(), torch.get_num_threads()), 1) == [
            (threading.current_thread(), 2)]


def test_the_callers_gradient_and_inference_modes_reach_the_threads(two_threads) -> None:
    w = torch.ones(3, requires_grad=True)
    with prompt_threads(4):
        with torch.no_grad():
            assert not any(t.requires_grad for t in map_runs(lambda run: w * len(run), 4))
        assert all(t.requires_grad for t in map_runs(lambda run: w * len(run), 4))
        with torch.inference_mode():
            assert all(t.is_inference() for t in map_runs(lambda run: torch.ones(2) * len(run), 4))


def test_an_error_reaches_the_caller_and_the_count_comes_back(two_threads) -> None:
    def fail(run: range) -> range:
        if 3 in run:
            raise ValueError("prompt 3")
        return run

    with pytest.raises(ValueError, match="prompt 3"), prompt_threads(4):
        map_runs(fail, 4)
    assert torch.get_num_threads() == 2
    with prompt_threads(4):
        assert map_runs(lambda run: list(run), 4) == [[0, 1], [2, 3]]


_KEEP = """
import os, torch
from samadapt.models.accel.cpu import keep_freed_memory
applied = keep_freed_memory()
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
torch.empty(2**10)
before = resident()
block = torch.empty(5 * 2**20).fill_(1)  # 20 MB, as a group of prompts' image tokens
held = resident()
del block
print(applied, (held - before) // 2**20, (resident() - before) // 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
@pytest.mark.parametrize("setting", ["1", "0"])
def test_freed_blocks_are_kept_for_reuse_unless_turned_off(setting: str) -> None:
    """With the setting, a freed 20 MB block stays with the process for the next one (glibc's default gives
    it back at once, and the next block is faulted in page by page); SAMADAPT_KEEP_FREED_MEMORY=0 leaves
    the default."""
    env = {**os.environ, "SAMADAPT_KEEP_FREED_MEMORY": setting}
    out = subprocess.run([sys.executable, "-c", _KEEP], env=env, capture_output=True, text=True, check=True)
    applied, held, after = out.stdout.split()
    assert int(held) >= 19
    if setting == "1":
        assert applied == "True" and int(after) >= 19
    else:
        assert applied == "False" and int(after) <= 10  # the block went back (a few MB of other growth aside)
