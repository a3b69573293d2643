"""Training throughput of thaw's loop (Lightning + PhaseModule) vs a plain PyTorch loop, as a ratio.

Same model, batch, image size, in-memory data and transforms on both sides; the two are run
alternately a few times in one process, so machine noise hits both alike. Prints img/s and the ratio
thaw / plain for phase 1 (frozen backbone, head only) and phase 2 (everything trainable).

    python bench/throughput.py [--model mobilenet_v2] [--size 128] [--batch 32] [--batches 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F

from thaw.core.config import DataConfig, ModelConfig
from thaw.core.strategies import PhasePlan
from thaw.data import Decoded, loader, train_transform
from thaw.models import build_classifier
from thaw.train.freeze import set_trainable
from thaw.train.module import PhaseModule
from thaw.train.optim import param_groups
from thaw.train.recipe import quiet_lightning


def make_loader(model, size: int, batch: int, n: int):
    pre = model.preprocessing
    g = torch.Generator().manual_seed(0)
    images = [
        torch.randint(0, 256, (3, pre.resize_size, pre.resize_size), dtype=torch.uint8, generator=g)
        for _ in range(n)
    ]
    data = Decoded([str(i) for i in range(n)], images, [i % 2 for i in range(n)])
    config = DataConfig(batch_size=batch, image_size=size)
    return loader(data, train_transform(pre, config), config, shuffle=True)


def plain(model, plan: PhasePlan, data) -> float:
    """What a user writes by hand: the same optimizer groups, eval-mode frozen parts, the same batches."""
    n_groups = len(model.layer_groups)
    set_trainable(model, plan.groups(n_groups), plan.bn_policy)
    groups = param_groups(model, plan.lr, plan.group_lr(n_groups), plan.weight_decay, plan.lr / plan.lr_ratio)
    optimizer = torch.optim.AdamW(groups)
    model.train()
    if not plan.groups(n_groups):
        model.backbone.eval()
    else:
        for m in model.backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
    start, n = time.perf_counter(), 0
    for x, y in data:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        n += len(y)
    return n / (time.perf_counter() - start)


def with_thaw(model, plan: PhasePlan, data) -> float:
    module = PhaseModule(model, plan)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        devices=1,
    )
    start = time.perf_counter()
    trainer.fit(module, data)
    return len(data.dataset) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    quiet_lightning()
    torch.manual_seed(0)
    model = build_classifier(ModelConfig(name=args.model, weights="none"), 2, image_size=args.size)
    data = make_loader(model, args.size, args.batch, args.batch * args.batches)
    print(
        f"{args.model} at {args.size}px, batch {args.batch}, {args.batches} batches, {args.rounds} rounds, "
        f"{torch.get_num_threads()} threads"
    )
    for plan in (
        PhasePlan("head only (phase 1)", "head", epochs=1, schedule="constant"),
        PhasePlan("all trainable (phase 2)", "all", epochs=1, schedule="constant"),
    ):
        plain(model, plan, data)  # warm-up: allocator, threads
        ours, theirs = [], []
        for _ in range(args.rounds):
            theirs.append(plain(model, plan, data))
            ours.append(with_thaw(model, plan, data))
        ratio = statistics.median(o / t for o, t in zip(ours, theirs))
        print(
            f"{plan.name}: plain PyTorch {statistics.median(theirs):6.1f} img/s | "
            f"thaw {statistics.median(ours):6.1f} img/s | ratio thaw/plain {ratio:.2f}"
        )


if __name__ == "__main__":
    main()
