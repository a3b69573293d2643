"""Training throughput on this CPU: eager vs ``--channels-last`` vs ``--compile`` vs both, and ResNet-50's
training FLOP/s as a share of the machine's measured fp32 matmul FLOP/s.

For each model and input size, one process builds the model (random weights: the timing does not depend
on them), AdamW over every parameter and one random batch, and times full training steps (forward, cross
entropy, backward, optimizer step) of each setting in turn, round after round, so every setting sees the
same background load; it reports the median step per setting as images/s and as a ratio to eager, and
the largest difference of each setting's logits from eager's in the first step (the same weights and
batch; relative to the largest logit): "exact" or not.
``torch.compile`` is timed after its first (compiling) steps, whose seconds are shown apart.

    python bench/compile.py                    # MobileNetV2 and ResNet-50 at 128 px: a few minutes
    python bench/compile.py --sizes 128 224    # and at 224 px
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.flop_counter import FlopCounterMode

SETTINGS = ("eager", "channels-last", "compile", "compile+channels-last")


def build(name: str, setting: str, state: dict) -> tuple[torch.nn.Module, callable, torch.optim.Optimizer]:
    model = getattr(torchvision.models, name)(weights=None, num_classes=10)
    model.load_state_dict(state)
    model.train()
    for m in model.modules():  # dropout draws from the RNG: off, so the settings' logits can be compared
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    if "channels-last" in setting:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if "compile" in setting else model
    return model, net, torch.optim.AdamW(model.parameters(), lr=1e-4)


def step(net, optimizer, x, y) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    logits = net(x)
    F.cross_entropy(logits, y).backward()
    optimizer.step()
    return logits.detach()


def matmul_flops(n: int = 1024, reps: int = 20) -> float:
    """The best fp32 matmul rate over a few tries: this machine's practical peak at these threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def measure(name: str, size: int, batch: int, steps: int, rounds: int, settings=SETTINGS) -> dict:
    torch.manual_seed(0)
    state = getattr(torchvision.models, name)(weights=None, num_classes=10).state_dict()
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    built = {s: build(name, s, copy.deepcopy(state)) for s in settings}
    last = x.contiguous(memory_format=torch.channels_last)
    inputs = {s: last if "channels-last" in s else x for s in settings}
    compile_s, times, logits = {}, {s: [] for s in settings}, {}
    for s, (_, net, opt) in built.items():  # warm-up: compilation, allocator, oneDNN primitives
        start = time.perf_counter()
        logits[s] = step(net, opt, inputs[s], y)  # the first step: the same weights and batch everywhere
        step(net, opt, inputs[s], y)
        compile_s[s] = time.perf_counter() - start
    ref = logits["eager"]
    diffs = {s: float((v - ref).abs().max() / ref.abs().max()) for s, v in logits.items()}
    for _ in range(rounds):
        for s, (_, net, opt) in built.items():
            start = time.perf_counter()
            for _ in range(steps):
                step(net, opt, inputs[s], y)
            times[s].append((time.perf_counter() - start) / steps)
    median = {s: statistics.median(t) for s, t in times.items()}
    flops = None
    if name == "resnet50":
        model, net, opt = build(name, "eager", copy.deepcopy(state))
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(model(x), y).backward()
        flops = counter.get_total_flops()
    return {"median": median, "diff": diffs, "warmup": compile_s, "flops": flops, "batch": batch}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet50"])
    p.add_argument("--sizes", nargs="+", type=int, default=[128])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="timed steps per setting per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS, help="eager always runs"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_flops()
    print(
        f"torch {torch.__version__}, {args.threads} threads; fp32 matmul (1024^3): {peak / 1e9:.1f} GFLOP/s"
    )
    print(f"batch {args.batch}; median of {args.rounds} rounds x {args.steps} training steps per setting\n")
    head = ("model", "px", "setting", "img/s", "vs eager", "max rel diff", "warm-up s")
    print(f"{head[0]:13} {head[1]:>4} {head[2]:22} {head[3]:>7} {head[4]:>8} {head[5]:>12} {head[6]:>9}")
    for name in args.models:
        for size in args.sizes:
            settings = ["eager", *[s for s in args.settings if s != "eager"]]
            r = measure(name, size, args.batch, args.steps, args.rounds, settings)
            eager = r["median"]["eager"]
            for s in settings:
                t = r["median"][s]
                print(
                    f"{name:13} {size:>4} {s:22} {args.batch / t:>7.1f} {eager / t:>7.2f}x "
                    f"{r['diff'][s]:>12.1e} {r['warmup'][s]:>9.1f}"
                )
            if r["flops"]:
                rate = r["flops"] / eager
                print(
                    f"{name:13} {size:>4} training step {r['flops'] / 1e9:.1f} GFLOP (forward + backward), "
                    f"eager "
                    f"{rate / 1e9:.1f} GFLOP/s = {100 * rate / peak:.0f}% of the matmul rate"
                )


if __name__ == "__main__":
    main()
