"""Where training runs: the device (CPU or a CUDA GPU), and this process's place in a DDP group.

`Runtime` is what the training code asks: which device its tensors go to, which precision its
forward passes take there (bf16 autocast on a GPU; train/precision.py on a CPU), which rows of a
global batch this process trains on (train/ddp.py), and whether it is the process that writes
files and logs. On a CPU in one process nothing changes: no copy, no thread, no collective.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from tandemrec.train.batches import Rows
from tandemrec.train.config import DeviceName
from tandemrec.train.precision import autocast, matmul_dtype

__all__ = ["DeviceName", "Runtime", "current", "resolve", "use"]
PREFETCH = 4  # batches built ahead of the GPU
M = TypeVar("M", bound=nn.Module)


def resolve(name: str, local_rank: int = 0) -> torch.device:
    """`auto`: the GPU when torch sees one, else the CPU; `cuda` without a GPU is an error."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device cuda: no CUDA device is visible to this torch "
                         f"({torch.__version__}); use device=cpu or device=auto")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


@dataclass(frozen=True)
class Runtime:
    """This process's device and its rank among `world` data-parallel processes."""

    device: torch.device = torch.device("cpu")
    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """The process that writes checkpoints, reports and logs."""
        return self.rank == 0

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def rows(self, n: int) -> Rows:
        """This process's contiguous share of a global batch of `n` rows (maybe empty)."""
        return Rows(n * self.rank // self.world, n * (self.rank + 1) // self.world, n)

    def shard(self) -> Callable[[int], Rows] | None:
        """What the batch builders shard by: None in a single process (whole batches)."""
        return self.rows if self.distributed else None

    def matmul_dtype(self, precision: str) -> torch.dtype | None:
        """bf16 on a GPU (autocast); on a CPU what the config's `precision` asks for."""
        if self.device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return matmul_dtype(precision)

    def autocast(self, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
        return autocast(dtype, self.device.type)

    def place(self, model: M) -> M:
        """Move `model` here; its cached item vectors (models/teacher.py) are dropped."""
        model.to(self.device).train(model.training)
        return model

    def batches(self, batches: Iterable[tuple]) -> Iterator[tuple]:
        """The batches on this device: as they come on a CPU; on a GPU built `PREFETCH` ahead
        in a thread, in pinned memory, and copied without blocking."""
        if self.on_cpu:
            yield from batches
            return
        for batch in built_ahead(batches, PREFETCH, pin=self.device.type == "cuda"):
            yield tuple(t.to(self.device, non_blocking=True) if isinstance(t, torch.Tensor)
                        else t for t in batch)


def built_ahead(batches: Iterable[tuple], depth: int, pin: bool = False) -> Iterator[tuple]:
    """Build batches in a thread, `depth` ahead (in pinned memory with `pin`); the order is the
    generator's own, so its random draws are the same as without the thread."""
    q: queue.Queue[Any] = queue.Queue(depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                q.put(tuple(t.pin_memory() if pin and isinstance(t, torch.Tensor) else t
                            for t in batch))
            q.put(done)
        except BaseException as exc:  # surfaces in the training loop, not in the thread
            q.put(exc)

    thread = threading.Thread(target=work, daemon=True, name="batches-ahead")
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                q.get_nowait()
            thread.join(0.01)


_current = Runtime()


def current() -> Runtime:
    """The runtime this process trains with (set by `use`; the CPU in one process by default)."""
    return _current


def use(rt: Runtime) -> Runtime:
    global _current
    _current = rt
    return rt
