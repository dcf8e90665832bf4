"""Benchmark: export a ~300M-parameter random Qwen2.5-VL, then time every bundle variant's decoder against PyTorch.

    python benchmarks/export.py [--quick] [--prefill 512] [--decode 32] [--repeats 3] [--out DIR]

One run: build the random checkpoint (`cof_training.tiny`, the real Qwen tokenizer: vocab 151665), export it with
`cof_export` (fp32, int8, int4 and the fused decoders, `force` so that every variant is written even where random
weights miss a parity threshold; the parity record is reported), then for PyTorch (transformers, the same model,
text decoder + last-token lm_head, a KV cache) and for every variant's decoder graph in ONNX Runtime (CPU), the same
protocol: prefill `--prefill` random embeddings with 3-D M-RoPE positions, then decode `--decode` tokens one at a
time feeding the KV cache back; one warm-up pass each, then `--repeats` rounds of one pass per backend in turn
(round-robin, so that a noisy neighbour on the same cores hits all alike), medians. Reported: export seconds,
MB per variant (its embed + vision + decoder graphs), prefill ms, decode ms/token, and speed-ups vs PyTorch.

Full: text hidden 1024, 12 layers, 16 heads (head_dim 64), 4 KV heads, MLP 2816, tied embeddings (Qwen2.5-VL-3B
style), a 4-block ViT of width 256: ~294M parameters (155M of them the embedding). `--quick`: a small model and
vocabulary (same JSON keys), for CI. Progress goes to stderr; the LAST line printed is a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = ("fp32", "int8", "int4", "fp32-fused", "int8-fused", "int4-fused")


def say(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def model_spec(quick: bool):
    from cof_training.tiny import TinySpec

    if quick:
        return "small", TinySpec(text_hidden=256, text_layers=4, text_heads=4, text_kv_heads=2, text_intermediate=512,
                                 mrope_section=(8, 12, 12), vision_hidden=64, vision_depth=4, vision_heads=2,
                                 vision_intermediate=128)
    return "qwen", TinySpec(text_hidden=1024, text_layers=12, text_heads=16, text_kv_heads=4, text_intermediate=2816,
                            mrope_section=(8, 12, 12), vision_hidden=256, vision_depth=4, vision_heads=4,
                            vision_intermediate=512, tie_word_embeddings=True)


def torch_pass(model, prefill_tokens: int, decode_tokens: int, seed: int = 0):
    """One pass of the protocol of `cof_export.fused.time_decoder` on the transformers model (the export's wrapper:
    text decoder + last-token lm_head, KV cache in and out); returns (prefill s, decode s/token)."""
    import torch

    from cof_export.graphs import DecoderWrapper, TextGeometry

    geo = TextGeometry.from_model(model)
    wrapper = DecoderWrapper(model).eval()
    rng = np.random.default_rng(seed)
    prompt = torch.from_numpy(rng.standard_normal((1, prefill_tokens, geo.hidden), dtype=np.float32))
    steps = torch.from_numpy(rng.standard_normal((decode_tokens, 1, 1, geo.hidden), dtype=np.float32))

    def one_pass():
        past = [torch.zeros(1, geo.kv_heads, 0, geo.head_dim) for _ in range(2 * geo.layers)]
        with torch.inference_mode():
            started = time.perf_counter()
            positions = torch.arange(prefill_tokens).view(1, 1, -1).expand(3, 1, -1)
            out = wrapper(prompt, torch.ones(1, prefill_tokens, dtype=torch.long), positions, *past)
            prefill = time.perf_counter() - started
            past = out[1:]
            started = time.perf_counter()
            for step in range(decode_tokens):
                total = prefill_tokens + step + 1
                out = wrapper(steps[step], torch.ones(1, total, dtype=torch.long),
                              torch.full((3, 1, 1), total - 1, dtype=torch.long), *past)
                past = out[1:]
        return prefill, (time.perf_counter() - started) / decode_tokens

    return one_pass


def ort_pass(path: Path, hidden: int, prefill_tokens: int, decode_tokens: int, threads: int | None):
    from cof_export import fused

    sess = fused.session(path, threads=threads)

    def one_pass():
        t = fused.time_decoder(sess, hidden, prefill_tokens, decode_tokens, repeats=1, warmup=False)
        return t.prefill_ms / 1e3, t.decode_ms_per_token / 1e3

    return one_pass


def time_round_robin(passes: dict, repeats: int) -> dict:
    """One warm-up pass each, then `repeats` rounds of one pass per backend in turn (a noisy neighbour, e.g. a
    training run on the same cores, hits every backend alike); medians."""
    runs = {name: [] for name in passes}
    for name, one_pass in passes.items():
        say(f"warm-up {name}")
        one_pass()
    for round_ in range(repeats):
        for name, one_pass in passes.items():
            say(f"round {round_ + 1}/{repeats}: {name}")
            runs[name].append(one_pass())
    return {name: {"prefill_ms": statistics.median(r[0] for r in rs) * 1e3,
                   "decode_ms": statistics.median(r[1] for r in rs) * 1e3} for name, rs in runs.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model, short runs (CI); same JSON keys")
    parser.add_argument("--prefill", type=int, default=None, help="prefill tokens (default 512; quick 128)")
    parser.add_argument("--decode", type=int, default=None, help="decoded tokens per pass (default 32; quick 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes after one warm-up (median)")
    parser.add_argument("--parity-steps", type=int, default=None, help="export parity steps (default 8; quick 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for both PyTorch and ONNX Runtime (default: each library's own; on "
                             "cores shared with another job, 1 avoids PyTorch's OpenMP barrier stalls)")
    parser.add_argument("--out", type=Path, default=None, help="keep the checkpoint and bundle here")
    args = parser.parse_args(argv)
    prefill_tokens = args.prefill or (128 if args.quick else 512)
    decode_tokens = args.decode or (16 if args.quick else 32)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from cof_edge.bundle import load_bundle
    from cof_export.pipeline import ExportConfig, export_bundle
    from cof_training.tiny import build_tiny_model

    root = args.out or Path(tempfile.mkdtemp(prefix="cof-bench-export-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer, spec = model_spec(args.quick)
        say(f"building the random checkpoint ({tokenizer} tokenizer) in {root}")
        model_dir = build_tiny_model(root / "model", tokenizer=tokenizer, spec=spec, seed=0)

        config = ExportConfig(precisions=("fp32", "int8", "int4"), force=True, fused=True,
                              parity_steps=args.parity_steps or (2 if args.quick else 8))
        started = time.perf_counter()
        export_bundle(model_dir, root / "bundle", config,
                      progress=lambda stage: say(f"[{time.perf_counter() - started:7.1f}s] export: {stage}"))
        export_seconds = time.perf_counter() - started
        bundle = load_bundle(root / "bundle")

        from transformers import Qwen2_5_VLForConditionalGeneration

        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(model_dir)).eval()
        params = sum(p.numel() for p in model.parameters())
        hidden = bundle.text["hidden"]
        say(f"timing PyTorch and {len(bundle.variants)} variants ({params / 1e6:.1f}M parameters, "
            f"{torch.get_num_threads()} torch threads)")
        passes = {"torch": torch_pass(model, prefill_tokens, decode_tokens)}
        for variant in [v for v in VARIANTS if v in bundle.variants]:
            passes[variant] = ort_pass(root / "bundle" / bundle.variant(variant)["decoder"].file, hidden,
                                       prefill_tokens, decode_tokens, args.threads)
        timings = time_round_robin(passes, args.repeats)
        del passes, model

        def ratio(variant, key):
            return round(timings["torch"][key] / timings[variant][key], 3) if variant in timings else None

        names = ("torch", *VARIANTS)
        summary = {
            "mode": "quick" if args.quick else "full",
            "params_m": round(params / 1e6, 1),
            "text": {k: bundle.text[k] for k in ("hidden", "layers", "heads", "kv_heads", "head_dim", "vocab_size")},
            "prefill_tokens": prefill_tokens, "decode_tokens": decode_tokens, "repeats": args.repeats,
            "threads": args.threads or torch.get_num_threads(),
            "export_seconds": round(export_seconds, 1),
            "bundle_mb": {v: (round(sum(g.bytes for g in bundle.variant(v).values()) / 2**20, 1)
                              if v in bundle.variants else None) for v in VARIANTS},
            "bundle_dir_mb": round(sum(p.stat().st_size for p in (root / "bundle").iterdir()) / 2**20, 1),
            "prefill_ms": {v: round(timings[v]["prefill_ms"], 2) if v in timings else None for v in names},
            "decode_ms": {v: round(timings[v]["decode_ms"], 3) if v in timings else None for v in names},
            "prefill_speedup_vs_torch": {v: ratio(v, "prefill_ms") for v in VARIANTS},
            "decode_speedup_vs_torch": {v: ratio(v, "decode_ms") for v in VARIANTS},
            "int8_decode_speedup_vs_torch": ratio("int8", "decode_ms"),
            "int4_decode_speedup_vs_torch": ratio("int4", "decode_ms"),
            "fused_fp32_decode_speedup_vs_torch": ratio("fp32-fused", "decode_ms"),
            "fused_int8_decode_speedup_vs_torch": ratio("int8-fused", "decode_ms"),
            "fused_int4_decode_speedup_vs_torch": ratio("int4-fused", "decode_ms"),
            "default_variant": bundle.default_variant,
            "parity": {v: {"top1_agreement": round(r["top1_agreement"], 3), "greedy_identical": r["greedy_identical"],
                           "logits_max_abs": float(f"{r['logits_max_abs']:.3g}"), "passed": not r["failures"]}
                       for v, r in bundle.parity.items()},
            "fused_kept": {v: r.get("kept", False) for v, r in bundle.exporter.get("fused", {}).get("variants", {}).items()},
        }
        print(json.dumps(summary))
        return summary
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
