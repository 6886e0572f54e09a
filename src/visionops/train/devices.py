"""Where and how training runs: device, AMP, threads, seeding, torchrun / DDP.

``train.device: auto`` picks CUDA, then Apple's MPS, then the CPU. Under ``torchrun
--nproc-per-node N`` (``WORLD_SIZE`` > 1 in the environment) the process group is initialised
with NCCL on CUDA and gloo otherwise; rank 0 alone writes artifacts and talks to MLflow.
"""

from __future__ import annotations

import logging
import os
import random
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from visionops.config import TrainParams
from visionops.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """The resolved execution setup for one process."""

    device: torch.device
    amp_dtype: torch.dtype | None  # bf16/fp16 autocast on CUDA, None elsewhere
    channels_last: bool
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> AbstractContextManager:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        amp = f", AMP {str(self.amp_dtype).removeprefix('torch.')}" if self.amp_dtype else ""
        ddp = f", DDP rank {self.rank}/{self.world_size}" if self.distributed else ""
        threads = f", {torch.get_num_threads()} threads" if self.device.type == "cpu" else ""
        return f"{self.device}{amp}{threads}{ddp}"


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda, mps, cpu (first available); an explicit but absent device is an error."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        requested = "cuda" if cuda else "mps" if mps else "cpu"
    if requested == "cuda":
        if not cuda:
            raise ConfigError(
                "train.device: cuda requested but no CUDA device is visible; use auto"
            )
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if requested == "mps" and not mps:
        raise ConfigError("train.device: mps requested but MPS is not available; use auto")
    return torch.device(requested)


def setup_runtime(params: TrainParams, seed: int) -> Runtime:
    """Resolve the device, start the process group under torchrun, set threads and seeds."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(params.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    if device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    amp_dtype = None
    if params.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    seed_everything(seed)
    return Runtime(device, amp_dtype, params.channels_last, rank, world_size, local_rank)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        torch.distributed.barrier()


def all_reduce_sum(runtime: Runtime, values: list[float]) -> list[float]:
    """Sum a few scalars over ranks (identity when not distributed)."""
    if not runtime.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=runtime.device)  # NCCL: on the GPU
    torch.distributed.all_reduce(tensor)
    return tensor.cpu().tolist()


def shutdown(runtime: Runtime) -> None:
    if runtime.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
