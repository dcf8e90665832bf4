"""Benchmark: THIS machine's limits, and how close the runtime gets to them.

    python benchmarks/limits.py [--quick] [--latency benchmarks/results/latency.json] [--out DIR]

Measured in the same run: memory bandwidth (numpy: read = sum of a large float32 array; copy = read + write; dot;
each on one core and on all cores at once) and
matmul throughput (numpy float32 GEMM GFLOP/s; onnxruntime int8 MatMulInteger GOP/s when onnx is installed).
Derived for each model of a latency run (its `models[*].limits_inputs`):
* decode bound (ms/token) = (weight bytes of the graph that runs decode steps + KV-cache bytes at the measured
  context) / bandwidth (the highest of the read, copy and dot kernels, one core or all, or of the latency run's
  decoders where one streamed faster: `roofline`);
* vision bound (ms/view) = vision FLOPs of the view / float32 GEMM throughput;
and the achieved fraction of each: bound_ms / measured_ms (1.0 = at the roofline). The summary's
`decode_bound_fraction` is the latency run's paired `decode_probe` where it has one (bandwidth and decode measured
side by side, benchmarks/decode_probe.py), else the headline variant's fraction here.
Writes `limits.json` under `--out` (default benchmarks/results/). The LAST line printed is a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, load_json, machine, say  # noqa: E402

from cof_edge.atomic import atomic_write_json  # noqa: E402


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (page faults, thread pool)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _parallel_seconds(kernel, chunks: list, repeats: int) -> float:
    """Best wall time of `kernel(chunk)` run on every chunk at once, one Python thread each (numpy releases the
    GIL inside these kernels, so the threads run on separate cores)."""
    if len(chunks) == 1:
        return _best_seconds(lambda: kernel(chunks[0]), repeats)
    with ThreadPoolExecutor(len(chunks)) as pool:
        return _best_seconds(lambda: list(pool.map(kernel, chunks)), repeats)


def measure_bandwidth(mb: int = 256, repeats: int = 5, cores: int | None = None) -> dict:
    """GB/s (1e9 bytes) over `mb` MiB arrays, best of `repeats`: numpy sum (read), copy (read + write) and a BLAS
    dot of two arrays (read both), each on one core and split over all `cores` at once. `bound_gbs`, the one the
    bounds use, is the highest of them: each kernel alone underestimates what the memory system gives (a numpy sum
    is partly compute-bound, one core may not saturate the memory controllers), and the highest keeps the bound
    honest whatever thread count the decode ran with."""
    cores = cores or len(os.sched_getaffinity(0))
    n = mb * 2**20 // 4
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    out = {"array_mb": mb, "cores": cores}
    for suffix, parts in [("", 1)] + ([("_all_cores", cores)] if cores > 1 else []):
        edges = np.linspace(0, n, parts + 1).astype(int)
        pairs = [(src[a:b], dst[a:b]) for a, b in zip(edges[:-1], edges[1:])]
        read_s = _parallel_seconds(lambda p: p[0].sum(), pairs, repeats)
        copy_s = _parallel_seconds(lambda p: np.copyto(p[1], p[0]), pairs, repeats)
        dot_s = _parallel_seconds(lambda p: np.dot(p[0], p[1]), pairs, repeats)
        out[f"read_gbs{suffix}"] = round(src.nbytes / read_s / 1e9, 2)
        out[f"copy_gbs{suffix}"] = round(2 * src.nbytes / copy_s / 1e9, 2)
        out[f"dot_gbs{suffix}"] = round(2 * src.nbytes / dot_s / 1e9, 2)
    out["bound_gbs"] = max(value for key, value in out.items() if "_gbs" in key)
    return out


def measure_gemm(n: int = 1024, repeats: int = 5) -> dict:
    """numpy float32 GEMM (BLAS threads as configured) GFLOP/s for an n×n×n product."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    s = _best_seconds(lambda: a @ b, repeats)
    return {"n": n, "fp32_gflops": round(2 * n**3 / s / 1e9, 2)}


def measure_ort_int8(n: int = 1024, repeats: int = 5, threads: int | None = None) -> dict | None:
    """onnxruntime MatMulInteger (uint8 × int8 → int32), the op `quantize_dynamic` emits: GOP/s. None without onnx."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    weight = rng.integers(-127, 128, (n, n), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "int8_gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
        [helper.make_tensor("w", TensorProto.INT8, [n, n], weight.tobytes(), raw=True)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (n, n), dtype=np.uint8)
    s = _best_seconds(lambda: sess.run(None, {"a": a}), repeats)
    return {"n": n, "int8_gops": round(2 * n**3 / s / 1e9, 2), "onnx": onnx.__version__}


def measure(quick: bool = False, threads: int | None = None) -> dict:
    say("limits: measuring memory bandwidth and matmul throughput")
    return {
        "bandwidth": measure_bandwidth(64 if quick else 256, 3 if quick else 5),
        "gemm": measure_gemm(512 if quick else 1024, 3 if quick else 5),
        "ort_int8": measure_ort_int8(512 if quick else 1024, 3 if quick else 5, threads),
    }


# -- model costs -------------------------------------------------------------------------------------------------

def vision_flops(cfg: dict, visual_tokens: int) -> float:
    """Multiply-adds ×2 of the Qwen2.5-VL vision tower for one view of `visual_tokens` merged tokens.

    `cfg`: hidden_size, intermediate_size, depth, out_hidden_size, fullatt_block_indexes, window_tokens (patches per
    attention window), spatial_merge_size, patch_dim. Linear layers: patch embed, per block QKV + proj + SwiGLU MLP
    (3 matrices), the merger (LN → 4d→4d → 4d→out). Attention: windowed blocks QK^T and AV within windows, full blocks
    over all patches."""
    merge = cfg.get("spatial_merge_size", 2)
    n = visual_tokens * merge * merge
    d, m = cfg["hidden_size"], cfg["intermediate_size"]
    depth = cfg["depth"]
    full = len(cfg.get("fullatt_block_indexes", ()))
    window = cfg.get("window_tokens", 64)
    flops = 2 * n * cfg.get("patch_dim", 1176) * d
    flops += depth * 2 * n * (4 * d * d + 3 * d * m)
    flops += (depth - full) * 4 * n * window * d + full * 4 * n * n * d
    md = d * merge * merge
    flops += 2 * visual_tokens * (md * md + md * cfg.get("out_hidden_size", d))
    return float(flops)


def kv_bytes(text: dict, context_tokens: int, dtype_bytes: int = 4) -> int:
    return 2 * text["layers"] * text["kv_heads"] * text["head_dim"] * context_tokens * dtype_bytes


def decode_bytes(inputs: dict, variant: str) -> int | None:
    """Bytes a decode step of `variant` reads: its decoder's weights plus the KV cache at the measured context."""
    weight_bytes = (inputs.get("decoder_bytes") or {}).get(variant)
    if not weight_bytes:
        return None
    return int(weight_bytes + kv_bytes(inputs["text"], inputs.get("decode_context_tokens") or 0))


def roofline(limits: dict, latency: dict | None) -> dict:
    """The bandwidth the decode bounds use: the best numpy kernel, or the fastest decoder of the latency run where
    that one read faster. A decoder that streams above the kernels shows the machine delivers that much; a bound
    below it would flatter every fraction (on this 2-core EPYC the fp32 fused decoder outran numpy's dot)."""
    best = {"gbs": limits["bandwidth"].get("bound_gbs", limits["bandwidth"]["read_gbs"]), "source": "numpy kernels"}
    for name, model in ((latency or {}).get("models") or {}).items():
        inputs = model.get("limits_inputs") or {}
        for variant, measured in (inputs.get("decode_ms_per_token") or {}).items():
            total = decode_bytes(inputs, variant)
            if total and measured and total / measured / 1e6 > best["gbs"]:
                best = {"gbs": round(total / measured / 1e6, 2), "source": f"decoder {name} {variant}"}
    return best


def bounds(model: dict, limits: dict, bandwidth_gbs: float) -> dict:
    """Decode and vision bounds of one latency-run model, and the achieved fractions of its measured times."""
    inputs = model.get("limits_inputs") or {}
    gemm = limits["gemm"]["fp32_gflops"] * 1e9
    out = {"decode": {}, "vision": {}}
    for variant, measured in (inputs.get("decode_ms_per_token") or {}).items():
        total = decode_bytes(inputs, variant)
        if not total or not measured:
            continue
        bound_ms = total / (bandwidth_gbs * 1e9) * 1e3
        out["decode"][variant] = {"bytes_per_token": total, "bound_ms": round(bound_ms, 4),
                                  "measured_ms": round(measured, 4), "fraction": round(bound_ms / measured, 4)}
    vcfg = inputs.get("vision_config")
    for variant, per_view in (inputs.get("vision_ms_per_view") or {}).items():
        if not vcfg:
            break
        entries = {}
        for tokens, measured in per_view.items():
            bound_ms = vision_flops(vcfg, int(tokens)) / gemm * 1e3
            entries[str(tokens)] = {"gflop": round(vision_flops(vcfg, int(tokens)) / 1e9, 3),
                                    "bound_ms": round(bound_ms, 3), "measured_ms": round(measured, 3),
                                    "fraction": round(bound_ms / measured, 4) if measured else None}
        out["vision"][variant] = entries
    return out


def derive(latency: dict | None, limits: dict, bandwidth_gbs: float | None = None) -> dict:
    """Bounds of every model of a latency run, against `bandwidth_gbs` (default: its own `roofline`)."""
    if not latency:
        return {}
    bandwidth_gbs = bandwidth_gbs or roofline(limits, latency)["gbs"]
    return {name: bounds(model, limits, bandwidth_gbs) for name, model in latency.get("models", {}).items()}


def headline_decode_fraction(derived: dict, latency: dict | None) -> float | None:
    """The decode fraction of the headline model/variant of a latency run: its paired `decode_probe` (bandwidth
    and decode measured side by side) where it ran, else its `headline` entry against `derived`'s bandwidth."""
    probe = (latency or {}).get("decode_probe") or {}
    if probe.get("fraction"):
        return probe["fraction"]
    if not latency or not derived:
        return None
    head = latency.get("headline") or {}
    model, variant = head.get("model"), head.get("int8_variant")
    entry = derived.get(model, {}).get("decode", {}).get(variant)
    return entry["fraction"] if entry else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller arrays and matrices (a few seconds)")
    parser.add_argument("--latency", type=Path, default=None,
                        help="a latency result to compare against (default: <out>/latency.json and "
                             "<out>/latency-*.json if present; the headline fraction comes from latency.json)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads for the int8 GEMM")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for limits.json")
    args = parser.parse_args(argv)
    limits = measure(args.quick, args.threads)
    latency_path = args.latency or args.out / "latency.json"
    latency = load_json(latency_path)
    line = roofline(limits, latency)
    derived = derive(latency, limits, line["gbs"])
    if args.latency is None:  # every other latency run in the directory too (e.g. latency-snapshot.json)
        for other in sorted(args.out.glob("latency-*.json")):
            for name, bound in derive(load_json(other), limits, line["gbs"]).items():
                derived.setdefault(name, bound)
    result = {"mode": "quick" if args.quick else "full", "machine": machine(), **limits, "roofline": line,
              "latency_file": str(latency_path) if latency else None, "models": derived}
    atomic_write_json(args.out / "limits.json", result)
    summary = {"mode": result["mode"], "bound_gbs": limits["bandwidth"]["bound_gbs"], "roofline_gbs": line["gbs"],
               "read_gbs": limits["bandwidth"]["read_gbs"],
               "copy_gbs": limits["bandwidth"]["copy_gbs"], "fp32_gflops": limits["gemm"]["fp32_gflops"],
               "int8_gops": (limits["ort_int8"] or {}).get("int8_gops"),
               "decode_bound_fraction": headline_decode_fraction(derived, latency),
               "models": {name: {"decode": {v: e["fraction"] for v, e in d["decode"].items()}}
                          for name, d in derived.items()}}
    say(f"wrote {args.out / 'limits.json'}")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
