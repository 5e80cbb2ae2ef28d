"""Data-parallel training (PyTorch DDP) under `torchrun`: gloo on CPUs, NCCL on GPUs.

Every process draws the same global batches (same seeds) and trains on its contiguous share of
each one's rows (train/batches.py), padded as the whole batch is. A step's loss is a mean over
the global batch's scored positions: each process weights its own mean by its share of them, so
the gradients DDP averages and the loss summed over the processes are those of one process
training on the whole batch. Validation users are split between the processes and their ranks
gathered, so every process takes the same early-stopping decisions. Only rank 0 writes files,
logs and progress bars (tandemrec/pipeline.py, tandemrec/progress.py).

    torchrun --nproc_per_node 2 --no-python tandem train -d ml-1m --set threads=1
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tandemrec.train.device import Runtime, resolve

EXIT_GRACE_S = 0.2  # at exit, for gloo's worker threads to release their last work (_close)
EXIT_BARRIER_S = 60  # at exit, the longest wait for the other processes (_close)
_EXIT: dict[str, Any] = {"failed": False, "hook": sys.excepthook}


def from_env(device: str = "auto") -> Runtime:
    """This process's runtime: one process, or its rank in the group torchrun started."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Runtime(resolve(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    where = resolve(device, local)
    if not dist.is_initialized():
        if where.type == "cuda":
            torch.cuda.set_device(where)
        dist.init_process_group("nccl" if where.type == "cuda" else "gloo",
                                device_id=where if where.type == "cuda" else None)
        _EXIT["hook"] = sys.excepthook
        sys.excepthook = _note_failure
        atexit.register(_close)
    return Runtime(where, rank, world)


def _close() -> None:
    """At exit: every process's collectives done, then the group torn down while Python runs.

    A process that exits straight after its last collective (rank 1, with no files to write)
    could reach interpreter finalisation while a gloo worker thread still held that
    collective's tensors; releasing them then needs the GIL, and the thread's forced exit
    aborted the process (SIGABRT, "terminate called without an active exception"; about one
    exit in four on 2 busy cores). The barrier makes every collective complete, but a worker
    releases its work just after completing it, so the main thread then sleeps a moment,
    without the GIL, for the workers to let go (torch has no call that waits for that). A
    process that failed skips the barrier (the others may never reach it), and a barrier that
    a failed peer never reaches gives up after EXIT_BARRIER_S.
    """
    if not dist.is_initialized():
        return
    if not _EXIT["failed"] and dist.get_backend() == "gloo":
        try:
            dist.monitored_barrier(timeout=timedelta(seconds=EXIT_BARRIER_S))
            time.sleep(EXIT_GRACE_S)
        except RuntimeError:  # a peer that failed or left: nothing to wait for
            pass
    dist.destroy_process_group()


def _note_failure(*exc: Any) -> None:
    """sys.excepthook: an uncaught exception ends this process; `_close` waits for no one."""
    _EXIT["failed"] = True
    _EXIT["hook"](*exc)


class _Loss(nn.Module):
    """The model with its loss as forward, the module DDP wraps (the loss reads more than
    `model.forward`: hidden states, the item head)."""

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Any]) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, *batch: Any) -> Any:
        return self.loss_fn(*batch)


class Step:
    """A training step's (loss to backpropagate, loss to report), in one process or in DDP.

    `loss_fn` returns (mean loss over this process's scored positions, their count), or the
    loss alone: under DDP the processes then weigh alike (the plain mean of their means).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Any], rt: Runtime) -> None:
        self.loss_fn, self.rt = loss_fn, rt
        self.ddp = None
        if rt.distributed:
            # Unused parameters exist: the teacher's intent table while it trains on items.
            self.ddp = DistributedDataParallel(
                _Loss(model, loss_fn), device_ids=[rt.device.index] if rt.device.index is not None
                else None, forward_sync_buffers=False, find_unused_parameters=True)

    def __call__(self, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ddp is None:
            out = self.loss_fn(*batch)
            loss = out[0] if isinstance(out, tuple) else out
            return loss, loss
        out = self.ddp(*batch)
        loss, count = out if isinstance(out, tuple) else (out, 1)
        count = torch.as_tensor(count, device=loss.device).float()
        total = count.clone()
        dist.all_reduce(total)
        share = count / total.clamp_min(1.0)
        zero = loss.new_zeros(())
        # A process whose share of a tiny last batch is empty has a NaN mean: it adds nothing.
        return (torch.where(count > 0, loss * share * self.rt.world, zero),
                torch.where(count > 0, loss.detach() * share, zero))


def sum_over(values: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Element-wise sum over the processes (the identity in one process)."""
    if rt.distributed:
        values = values.to(rt.device)
        dist.all_reduce(values)
    return values


def gather_rows(part: np.ndarray, rt: Runtime) -> np.ndarray:
    """Every process's `part`, concatenated in rank order (their rows in order)."""
    if not rt.distributed:
        return part
    parts: list[Any] = [None] * rt.world
    dist.all_gather_object(parts, part)
    return np.concatenate(parts)


def from_main(value: Any, rt: Runtime) -> Any:
    """Rank 0's `value` on every process (decisions that read a clock)."""
    if not rt.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(rt: Runtime) -> None:
    """Wait for every process (files rank 0 writes that the others read next)."""
    if rt.distributed:
        dist.barrier()
