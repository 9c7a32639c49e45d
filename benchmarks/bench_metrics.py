"""Time and peak memory of the exact (sort-based) vs streaming (count table) pixel-failure metrics.

Each method runs in its own subprocess so that its peak resident memory (``resource.getrusage`` ``ru_maxrss``)
is its own. The split is ``--pixels`` pixels cut into ``--chunk``-pixel "images" (float32 scores, bool errors,
about 10% errors, errors scoring higher); both methods see the same data (chunk ``i`` comes from seed
``(seed, i)``). The exact method must hold the whole split (5 bytes/pixel of input) before it starts; the
streaming one generates and feeds one chunk at a time.

Usage::

    python benchmarks/bench_metrics.py                      # 10^8 pixels, chunks of 10^7, pooled, CPU
    python benchmarks/bench_metrics.py --pixels 1e6 --chunk 1e5
    python benchmarks/bench_metrics.py --device cuda        # streaming on the GPU (exact stays on CPU)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np


def make_chunk(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunk ``index`` of the split, from seed ``(seed, index)``: scores ``(size,)`` float32 and errors ``(size,)``
    bool; about 10% errors, whose logits are 1.5 higher."""
    rng = np.random.default_rng([seed, index])
    error = rng.random(size, dtype=np.float32) < 0.1
    logit = rng.standard_normal(size, dtype=np.float32) + 1.5 * error.astype(np.float32) - 1.0
    score = 1.0 / (1.0 + np.exp(-logit))
    return score.astype(np.float32), error


def make_chunk_on(device: str, seed: int, index: int, size: int) -> tuple[Any, Any]:
    """`make_chunk`'s distribution drawn by torch on ``device`` (so that a GPU benchmark does not wait on numpy):
    scores ``(size,)`` float32 and errors ``(size,)`` bool tensors. Same distribution, not the same numbers."""
    import torch

    seed_of_chunk = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
    generator = torch.Generator(device=device).manual_seed(seed_of_chunk)
    error = torch.rand(size, generator=generator, device=device) < 0.1
    logit = torch.randn(size, generator=generator, device=device) + 1.5 * error.float() - 1.0
    return torch.sigmoid(logit), error


def chunk_sizes(pixels: int, chunk: int) -> list[int]:
    """The sizes of the chunks that cut ``pixels`` into pieces of at most ``chunk``."""
    return [min(chunk, pixels - start) for start in range(0, pixels, chunk)]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def worker(args: argparse.Namespace) -> dict:
    import torch
    from tqdm.auto import tqdm

    from synthcp3d.metrics import StreamingPixelFailureMetrics, pixel_failure_metrics

    torch.set_num_threads(args.threads)
    baseline = _peak_rss_mib()
    sizes = chunk_sizes(args.pixels, args.chunk)
    if args.worker == "exact":
        scores, errors = zip(*(make_chunk(args.seed, i, n) for i, n in enumerate(tqdm(sizes, desc="generate"))))
        input_mib = sum(s.nbytes + e.nbytes for s, e in zip(scores, errors)) / 2**20
        start = time.perf_counter()
        result = pixel_failure_metrics(list(scores), list(errors), reduction=args.reduction)
        seconds = time.perf_counter() - start
    else:
        metric = StreamingPixelFailureMetrics(args.reduction, max_bins=args.max_bins, device=args.device)
        seconds, input_mib = 0.0, 0.0
        for i, n in enumerate(tqdm(sizes, desc="stream")):
            score, error = make_chunk(args.seed, i, n)
            input_mib = max(input_mib, (score.nbytes + error.nbytes) / 2**20)
            start = time.perf_counter()
            metric.update(torch.from_numpy(score).to(args.device), torch.from_numpy(error).to(args.device))
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds += time.perf_counter() - start
            del score, error
        start = time.perf_counter()
        result = metric.compute()
        seconds += time.perf_counter() - start
    out = {
        "method": args.worker,
        "seconds": seconds,
        "peak_rss_mib": _peak_rss_mib(),
        "baseline_rss_mib": baseline,
        "input_mib": input_mib,
        "result": result,
    }
    if args.worker == "streaming" and args.device.startswith("cuda"):
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pixels", type=float, default=1e8, help="pixels in the split (default 1e8)")
    parser.add_argument("--chunk", type=float, default=1e7, help="pixels per image fed to the streaming metric")
    parser.add_argument("--max-bins", type=int, default=2**20, help="distinct scores the pooled table keeps")
    parser.add_argument("--reduction", choices=("pooled", "per_image"), default="pooled")
    parser.add_argument("--device", default="cpu", help="device of the streaming metric")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="exact,streaming", help="comma-separated subset to run")
    parser.add_argument("--worker", choices=("exact", "streaming"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.pixels, args.chunk = int(args.pixels), int(args.chunk)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    print(
        f"{args.pixels:.3g} pixels in {len(chunk_sizes(args.pixels, args.chunk))} images of <= {args.chunk:.3g}, "
        f"reduction={args.reduction}, max_bins={args.max_bins}, streaming device={args.device}",
        flush=True,
    )
    runs = {}
    for method in args.methods.split(","):
        command = [sys.executable, __file__, "--worker", method] + sys.argv[1:]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
        runs[method] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{'method':<10} {'time s':>8} {'peak RSS MiB':>13} {'minus start':>12} {'input held MiB':>15}")
    for method, run in runs.items():
        extra = f"  peak GPU {run['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in run else ""
        print(
            f"{method:<10} {run['seconds']:8.2f} {run['peak_rss_mib']:13.0f} "
            f"{run['peak_rss_mib'] - run['baseline_rss_mib']:12.0f} {run['input_mib']:15.0f}{extra}"
        )
    for method, run in runs.items():
        values = ", ".join(f"{k}={v:.4f}" for k, v in run["result"].items() if isinstance(v, float))
        if "precision_bits" in run["result"]:  # the mantissa bits the streaming table kept (23: exact ranking)
            values += f", precision_bits={run['result']['precision_bits']}"
        print(f"{method:<10} {values}")
    if {"exact", "streaming"} <= runs.keys():
        exact, stream = runs["exact"], runs["streaming"]
        growth = (exact["peak_rss_mib"] - exact["baseline_rss_mib"]) / max(
            stream["peak_rss_mib"] - stream["baseline_rss_mib"], 1e-9
        )
        print(
            f"ratio exact/streaming: time {exact['seconds'] / stream['seconds']:.2f}x, "
            f"peak RSS {exact['peak_rss_mib'] / stream['peak_rss_mib']:.2f}x, "
            f"RSS growth over start {growth:.2f}x"
        )
        diffs = {k: stream["result"][k] - v for k, v in exact["result"].items() if isinstance(v, float)}
        print("streaming - exact (points): " + ", ".join(f"{k}={v:+.5f}" for k, v in diffs.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
