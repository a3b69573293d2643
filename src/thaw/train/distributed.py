"""Past one device: the hardware settings checked against this machine, turned into Lightning's Trainer
arguments, and the few collective steps thaw's own parts need under DDP.

A run on several processes (``--devices N``, ``--num-nodes N``, or started by ``torchrun`` / SLURM) joins
its process group once, before anything is read or written, through a Lightning :class:`~lightning.Fabric`
(``thaw fit`` is started again on every local rank by Lightning's script launcher, exactly as a Trainer
would). From there:

- rank 0 names and creates the run folder and writes the split; the other ranks wait, then read that
  split, so every rank trains on the same one; only rank 0 writes into the run folder;
- the decoded-image cache and the phase-1 feature cache are computed by rank 0 first; the other ranks
  then find them in the cache (or compute their own where the cache folder is not shared);
- each rank trains on its shard of every epoch's order (``EpochSampler``), and validation metrics are
  torchmetrics states summed over the ranks: the whole validation set, as one process would see it;
- every stop (early stopping, a non-finite loss) is decided for all ranks together.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from thaw.core.config import HardwareConfig
from thaw.core.errors import ThawError


def machine() -> str:
    """What this machine has, in words: ``2 CPU cores, no CUDA GPU, no MPS device``."""
    cores = os.cpu_count() or 1
    parts = [f"{cores} CPU core{'s' if cores != 1 else ''}"]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        parts.append(f"{n} CUDA GPU{'s' if n != 1 else ''} ({torch.cuda.get_device_name(0)})")
    else:
        parts.append("no CUDA GPU")
    parts.append("an Apple MPS device" if mps_available() else "no MPS device")
    return ", ".join(parts)


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def accelerator(hw: HardwareConfig) -> str:
    """The accelerator ``auto`` stands for here: a CUDA GPU, else an MPS device, else the CPU."""
    if hw.accelerator != "auto":
        return hw.accelerator
    return "gpu" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"


def launched_externally() -> bool:
    """Started by torchrun or SLURM (or a Lightning launcher): the processes exist already."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def check(hw: HardwareConfig) -> str:
    """The resolved accelerator, or one line naming what this machine has and what to give instead.
    Checked before Lightning so the message names the flags."""
    acc = accelerator(hw)
    has = machine()
    if acc == "gpu" and not torch.cuda.is_available():
        raise ThawError(f"--accelerator gpu needs a CUDA GPU; this machine has {has}: use --accelerator cpu")
    if acc == "mps" and not mps_available():
        raise ThawError(f"--accelerator mps needs an Apple MPS device; this machine has {has}")
    available = torch.cuda.device_count() if acc == "gpu" else 1 if acc == "mps" else os.cpu_count() or 1
    if hw.devices > available and not launched_externally():
        raise ThawError(
            f"--devices {hw.devices} on {acc}: this machine has {has}; give --devices {available} or fewer"
        )
    if hw.precision == "16-mixed" and acc == "cpu":
        raise ThawError(
            f"--precision 16-mixed needs a GPU; this machine has {has}: use --precision bf16-mixed or 32 on "
            f"the CPU"
        )
    if hw.precision == "bf16-mixed" and acc == "gpu" and not torch.cuda.is_bf16_supported():
        raise ThawError(f"--precision bf16-mixed: this GPU does not support bfloat16 ({has}); use 16-mixed")
    if hw.dist_strategy == "fsdp" and acc != "gpu":
        raise ThawError(f"--dist-strategy fsdp needs CUDA GPUs; this machine has {has}: use ddp")
    return acc


def world_size(hw: HardwareConfig) -> int:
    return hw.devices * hw.num_nodes


def strategy(hw: HardwareConfig):
    """Lightning's strategy: ``auto`` for one process, else DDP (or FSDP). FSDP keeps the original
    parameters, so a partly frozen backbone (phase 1, or ``--unfreeze N``) can be sharded."""
    if world_size(hw) == 1 and hw.dist_strategy == "auto":
        return "auto"
    if hw.dist_strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        return FSDPStrategy(use_orig_params=True, state_dict_type="full")
    return "ddp"


def trainer_args(hw: HardwareConfig) -> dict:
    """The Lightning Trainer arguments of these settings. thaw shards the data itself (``EpochSampler``),
    so Lightning's DistributedSampler is off. Bit-for-bit determinism on the CPU; on a GPU some kernels
    (adaptive pooling's backward) have no deterministic version, so there it is asked for with a warning."""
    acc = accelerator(hw)
    return {
        "accelerator": acc,
        "deterministic": True if acc == "cpu" else "warn",
        "devices": hw.devices,
        "num_nodes": hw.num_nodes,
        "precision": hw.precision,
        "strategy": strategy(hw),
        "use_distributed_sampler": False,
    }


def start(hw: HardwareConfig) -> None:
    """Join (or, for ``--devices N`` on one machine, launch) the process group, once per process, before
    anything is read or written. One process: nothing to do."""
    if world_size(hw) == 1 or (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    import lightning as L

    args = trainer_args(hw)
    strat = "fsdp" if hw.dist_strategy == "fsdp" else "ddp"
    fabric = L.Fabric(
        accelerator=args["accelerator"], devices=hw.devices, num_nodes=hw.num_nodes, strategy=strat
    )
    fabric.launch()


def active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def size() -> int:
    return torch.distributed.get_world_size() if active() else 1


def is_zero() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        torch.distributed.barrier()


def broadcast(value):
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if not active():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def on_zero(fn):
    """``fn()`` run on rank 0 alone, its result on every rank; a ThawError there is raised on every rank,
    so no rank waits for one that has stopped."""
    result, error = None, None
    if is_zero():
        try:
            result = fn()
        except ThawError as err:
            if not active():
                raise
            error = err
    error_text, result = broadcast((str(error) if error else None, result))
    if error is not None:
        raise error
    if error_text is not None:
        raise ThawError(error_text)
    return result


@contextmanager
def rank_zero_first():
    """Rank 0 runs the block first (it fills a cache); the other ranks run it after, and find it full."""
    if not is_zero():
        barrier()
    try:
        yield
    finally:
        if is_zero():
            barrier()
