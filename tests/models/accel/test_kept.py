"""Values kept beside an embedding or per module: computed once, also when several threads ask at once."""

from __future__ import annotations

import threading
import time

import torch
from torch import nn

from samadapt.models.accel.kept import KeptBeside, KeptPerModule, weights_key


def _ask_together(get, threads: int = 4) -> list[object]:
    start = threading.Barrier(threads)
    seen: list[object] = []

    def ask() -> None:
        start.wait(timeout=10)
        seen.append(get())

    workers = [threading.Thread(target=ask) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return seen


def test_threads_asking_at_once_share_one_computation() -> None:
    calls: list[int] = []

    def slow() -> torch.Tensor:
        calls.append(1)
        time.sleep(0.05)  # long enough for every thread to ask meanwhile
        return torch.ones(2)

    beside: KeptBeside[torch.Tensor] = KeptBeside()
    embedding = torch.zeros(3)
    seen = _ask_together(lambda: beside.get(embedding, ("k",), (), slow))
    assert len(calls) == 1 and all(v is seen[0] for v in seen)

    per_module: KeptPerModule[torch.Tensor] = KeptPerModule()
    layer = nn.Linear(2, 2)
    calls.clear()
    seen = _ask_together(lambda: per_module.get(layer, weights_key(layer.weight), slow))
    assert len(calls) == 1 and all(v is seen[0] for v in seen)


def test_a_changed_weight_or_a_new_tensor_recomputes() -> None:
    per_module: KeptPerModule[int] = KeptPerModule()
    layer = nn.Linear(2, 2)
    count = iter(range(10))
    first = per_module.get(layer, weights_key(layer.weight), lambda: next(count))
    assert per_module.get(layer, weights_key(layer.weight), lambda: next(count)) == first
    with torch.no_grad():
        layer.weight.add_(1)
    assert per_module.get(layer, weights_key(layer.weight), lambda: next(count)) != first

    beside: KeptBeside[int] = KeptBeside()
    a, b = torch.zeros(2), torch.zeros(2)
    assert beside.get(a, (), (), lambda: 1) == 1
    assert beside.get(b, (), (), lambda: 2) == 2 and beside.get(a, (), (), lambda: 3) == 1
    del a
    assert len(beside) == 1  # dropped with its tensor
