"""What ``matched``'s precise statistics cost: the pass before each validation against the training epoch
it follows, measured side by side in one process (these machines are noisy; run it alone).

    python bench/precise_cost.py [--image-size 128] [--batches 20 40] [--repeats 3]

For an epoch of ``B`` training batches of 32 (MobileNetV2, every layer group trained, AdamW, batch norm in
train mode as ``matched`` trains it), it times the epoch's steps and then ``tracked.precise`` over
``min(B, K)`` of those batches (``--precise-batches``, default ``--bn-precise-batches``'s), and prints their
ratio. The batches are tensors made once, so neither side pays for decoding and augmentation (a real run
pays for them on both sides: K augmented batches against B), and validation is not counted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from thaw.core.config import BN_PRECISE_BATCHES, ModelConfig
from thaw.core.strategies import PhasePlan
from thaw.models import build_classifier
from thaw.train.module import PhaseModule
from thaw.train.optim import param_groups
from thaw.train.tracked import MatchedStatistics, precise


def measure(image_size: int, batches: int, repeats: int, k: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_classifier(ModelConfig(name="mobilenet_v2", weights="none"), 6, image_size=image_size)
    plan = PhasePlan("phase2", "all", bn_policy="matched")
    module = PhaseModule(model, plan)
    module.train()
    data = [(torch.randn(32, 3, image_size, image_size), torch.randint(0, 6, (32,))) for _ in range(batches)]
    optimizer = torch.optim.AdamW(
        param_groups(model, plan.lr, plan.group_lr(len(model.layer_groups)), 0.01, plan.backbone_lr())
    )
    layers = MatchedStatistics.layers(module)
    epochs, passes = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for x, y in data:
            loss = torch.nn.functional.cross_entropy(module._forward(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epochs.append(time.perf_counter() - start)
        start = time.perf_counter()
        precise(module, layers, iter(data), min(batches, k))
        passes.append(time.perf_counter() - start)
    return statistics.median(epochs), statistics.median(passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[20, 40])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precise-batches", type=int, default=BN_PRECISE_BATCHES)
    args = parser.parse_args()
    print(
        f"torch threads: {torch.get_num_threads()}, {args.image_size} px, batch 32, median of {args.repeats}"
    )
    print(f"precise pass over {args.precise_batches} batches")
    print("| training batches per epoch | epoch s | precise pass s | pass / epoch |")
    print("|---|---|---|---|")
    for b in args.batches:
        epoch, pass_ = measure(args.image_size, b, args.repeats, args.precise_batches)
        print(f"| {b} | {epoch:.1f} | {pass_:.1f} | {pass_ / epoch:.2f} |")


if __name__ == "__main__":
    main()
