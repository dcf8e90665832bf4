"""Benchmark: native preprocessing vs numpy fallback vs transformers' Qwen2VLImageProcessorPil.

    python benchmarks/preprocess.py [--quick] [--threads N]

Per input size (448x448, 1920x1080, 3840x2160; resized to the smart_resize target for min_pixels=56*56,
max_pixels=1003520, i.e. 1280 tokens, the Qwen default), it reports the median per-image time of
- native: cof_edge.preprocess(backend="native"), into a preallocated output buffer,
- numpy:  cof_edge.preprocess(backend="numpy") (Pillow resize + numpy normalize/patchify),
- hf_pil: Qwen2VLImageProcessorPil (transformers; skipped if transformers is not installed),
plus a plain np.copyto of the output buffer at 3840x2160, after a warm-up, over several repeats.
The LAST line printed is a one-line JSON summary.
"""

from __future__ import annotations

import os

# Preprocessing uses no BLAS; idle OpenBLAS threads spinning in this process would steal the 2 cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from cof_edge import preprocess as pp  # noqa: E402

SIZES = [(448, 448), (1080, 1920), (2160, 3840)]  # (height, width)
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280  # 1003520


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients + noise + sharp-edged rectangles, uint8 RGB."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    img = np.stack([200 * x + 30 * y, 120 + 100 * np.sin(6 * x + 3 * y), 255 * (1 - y) * x], axis=-1)
    img = img + rng.normal(0, 12, size=(height, width, 3)).astype(np.float32)
    for _ in range(12):
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        img[y0 : y0 + height // 6, x0 : x0 + width // 6] = rng.integers(0, 256, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def timeit(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (finishes in well under 30 s)")
    ap.add_argument("--threads", type=int, default=None, help="native worker threads (default: available cores)")
    args = ap.parse_args(argv)

    threads = args.threads or pp._default_threads()
    reps_fast = 7 if args.quick else 25
    reps_slow = 3 if args.quick else 9

    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        hf = Qwen2VLImageProcessorPil(size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS})
    except Exception as exc:  # transformers is an optional (export) dependency
        print(f"transformers unavailable, HF column skipped: {exc}", file=sys.stderr)
        hf = None

    native = pp.native_available()
    print(f"native extension: {'yes' if native else 'NO (' + str(pp.native_import_error()) + ')'}; "
          f"threads={threads}; repeats={reps_fast}/{reps_slow}; load average {os.getloadavg()[0]:.2f} "
          "(timings are wall-clock medians: other load on the machine slows the threaded native path most)")
    print(f"{'input (WxH)':>12} {'target':>10} {'native ms':>10} {'1 thread':>9} {'numpy ms':>9} {'hf_pil ms':>9} "
          f"{'np/nat':>7} {'hf/nat':>7} {'exact':>6}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    summary: dict = {"threads": threads, "native": native,
                     "isa": getattr(pp._native, "ISA", None) if native else None,
                     "loadavg_1min_at_start": round(load, 2) if load is not None else None}
    for height, width in SIZES:
        img = photo_like(height, width)
        out_hw = pp.target_hw(height, width, MIN_PIXELS, MAX_PIXELS)
        n = (out_hw[0] // 14) * (out_hw[1] // 14)
        out = np.empty((n, pp.PATCH_DIM), dtype=np.float32)
        key = f"{width}x{height}"

        t_np = timeit(lambda: pp.preprocess(img, out_hw, backend="numpy", out=out), reps_slow, warmup=1)
        ref = pp.preprocess(img, out_hw, backend="numpy")[0]
        t_nat = t_nat1 = exact = None
        if native:
            t_nat = timeit(lambda: pp.preprocess(img, out_hw, backend="native", threads=threads, out=out), reps_fast)
            t_nat1 = timeit(lambda: pp.preprocess(img, out_hw, backend="native", threads=1, out=out), reps_fast)
            exact = bool(np.array_equal(pp.preprocess(img, out_hw, backend="native")[0], ref))
        t_hf = None
        if hf is not None:
            t_hf = timeit(lambda: hf(images=[img], return_tensors="np"), reps_slow, warmup=1)
            hf_vals = hf(images=[img], return_tensors="np")["pixel_values"]
            exact = (exact if exact is not None else True) and bool(np.array_equal(hf_vals, ref))

        def ms(t):
            return f"{t * 1e3:.2f}" if t is not None else "-"

        def ratio(a, b):
            return f"{a / b:.1f}x" if a is not None and b is not None else "-"

        print(f"{key:>12} {out_hw[1]}x{out_hw[0]:<5} {ms(t_nat):>10} {ms(t_nat1):>9} {ms(t_np):>9} {ms(t_hf):>9} "
              f"{ratio(t_np, t_nat):>7} {ratio(t_hf, t_nat):>7} {str(exact):>6}")
        summary[f"native_ms_{key}"] = round(t_nat * 1e3, 3) if t_nat is not None else None
        summary[f"native_1thread_ms_{key}"] = round(t_nat1 * 1e3, 3) if t_nat1 is not None else None
        summary[f"numpy_ms_{key}"] = round(t_np * 1e3, 3)
        summary[f"hf_pil_ms_{key}"] = round(t_hf * 1e3, 3) if t_hf is not None else None
        summary[f"exact_{key}"] = exact
        if t_hf is not None and t_nat is not None:
            summary[f"speedup_vs_hf_pil_{key}"] = round(t_hf / t_nat, 2)
            summary[f"speedup_vs_hf_pil_1thread_{key}"] = round(t_hf / t_nat1, 2)
        if t_nat is not None:
            summary[f"speedup_vs_numpy_{key}"] = round(t_np / t_nat, 2)

        if (height, width) == (2160, 3840):
            dst = np.empty_like(out)
            t_copy = timeit(lambda: np.copyto(dst, out), reps_fast)
            print(f"{'memcpy':>12} {out.nbytes / 2**20:.1f} MiB output buffer (np.copyto): {t_copy * 1e3:.2f} ms")
            summary["memcpy_ms_3840x2160"] = round(t_copy * 1e3, 3)
            if t_nat is not None:
                summary["fraction_of_memcpy_3840x2160"] = round(t_copy / t_nat, 3)
                summary["ext_over_memcpy"] = round(t_nat / t_copy, 2)
    summary.setdefault("speedup_vs_hf_pil_3840x2160", None)
    summary.setdefault("fraction_of_memcpy_3840x2160", None)
    summary.setdefault("ext_over_memcpy", None)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
