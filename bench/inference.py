"""CPU inference: PyTorch eager vs ONNX Runtime on the file `thaw export` writes, batch 1 and 32.

Same model (normalisation and softmax included on both sides), same float32 inputs; the two are timed
alternately in one process, so machine noise hits both alike. Prints median latency per batch, images/s
and the ratio ONNX Runtime / PyTorch, and writes the figures to bench/out/inference.json. Weights do
not change the timing, so the model is built with ``weights=none`` (no download).

    python bench/inference.py [--model mobilenet_v2] [--size 224] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def timed(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    import onnxruntime as ort

    from thaw.core.config import ModelConfig
    from thaw.models import build_classifier, save_model
    from thaw.use.export import ServingModel, export_run

    model = build_classifier(
        ModelConfig(name=args.model, weights="none"),
        args.classes,
        [str(i) for i in range(args.classes)],
        args.size,
    ).eval()
    folder = Path(tempfile.mkdtemp())
    save_model(model, folder / "model.safetensors")
    exported = export_run(folder / "model.safetensors", "onnx", folder / "model.onnx")
    serving = ServingModel(model).eval()
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])

    results = []
    for batch, repeats in ((1, 20), (32, 2)):
        x = np.random.default_rng(0).random((batch, 3, args.size, args.size), dtype=np.float32)
        xt = torch.from_numpy(x)

        def eager(xt=xt):
            with torch.inference_mode():
                serving(xt)

        def onnx(x=x):
            session.run(None, {"image": x})

        for fn in (eager, onnx):  # warm up
            timed(fn, 2)
        times = {"pytorch": [], "onnxruntime": []}
        for _ in range(args.rounds):
            times["pytorch"].append(timed(eager, repeats))
            times["onnxruntime"].append(timed(onnx, repeats))
        row = {"batch": batch}
        for name, ts in times.items():
            median = statistics.median(ts)
            row[name] = {"latency_ms": round(1000 * median, 2), "images_per_s": round(batch / median, 1)}
        row["speedup_onnxruntime"] = round(row["pytorch"]["latency_ms"] / row["onnxruntime"]["latency_ms"], 2)
        results.append(row)
        pt, rt = row["pytorch"], row["onnxruntime"]
        print(
            f"batch {batch:>2}: PyTorch eager {pt['latency_ms']:8.2f} ms ({pt['images_per_s']:7.1f} img/s) | "
            f"ONNX Runtime {rt['latency_ms']:8.2f} ms ({rt['images_per_s']:7.1f} img/s) | "
            f"ONNX Runtime / PyTorch speed {row['speedup_onnxruntime']:.2f}x"
        )
    load = os.getloadavg()[0]
    meta = {
        "model": args.model,
        "size": args.size,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_1min_after": round(load, 2),
        "results": results,
    }
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "inference.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(
        f"{args.model} {args.size}px, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"onnxruntime {ort.__version__}; 1-min load average afterwards {load:.2f}"
    )


if __name__ == "__main__":
    main()
