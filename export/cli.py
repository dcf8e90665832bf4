"""`cof-export`: a Hugging Face Qwen2.5-VL checkpoint directory → a parity-checked cof-edge bundle."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .pipeline import BUDGET_FIELDS, ExportConfig, ParityError, export_bundle
from .quantize import QuantSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cof-export", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face checkpoint directory")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write (replaced atomically)")
    parser.add_argument("--precision", default="fp32,int8",
                        help="comma-separated decoder precisions: fp32,int8,int4,fp16 (fp32 is always included)")
    parser.add_argument("--vision-precision", choices=["fp32", "fp16"], default=None,
                        help="vision encoder precision (default: fp32 for cpu, fp16 for GPU targets)")
    parser.add_argument("--target", choices=["cpu", "cuda", "tensorrt"], default="cpu")
    parser.add_argument("--int4-block-size", type=int, default=QuantSettings.int4_block_size)
    parser.add_argument("--int8-embeddings", action="store_true",
                        help="int8 embedding table too (per-tensor; moves top-1 more than the decoder MatMuls)")
    parser.add_argument("--no-fused", action="store_true",
                        help="skip the onnxruntime-genai fused decoders (built for --target cpu, kept when faster)")
    parser.add_argument("--no-step-decoder", action="store_true",
                        help="skip int8-fused's one-token step decoder (it decodes faster, but it is a second copy "
                             "of the decoder weights, in memory and on disk)")
    parser.add_argument("--parity-steps", type=int, default=16, help="teacher-forced and greedy steps per probe")
    parser.add_argument("--force", action="store_true", help="write even if a parity threshold is missed (marked)")
    for name in BUDGET_FIELDS:
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    budgets = {name: getattr(args, name) for name in BUDGET_FIELDS if getattr(args, name) is not None}
    try:
        config = ExportConfig(precisions=tuple(p.strip() for p in args.precision.split(",") if p.strip()),
                              vision_precision=args.vision_precision, target=args.target, force=args.force,
                              parity_steps=args.parity_steps, budgets=budgets, fused=not args.no_fused,
                              step_decoder=not args.no_step_decoder,
                              quant=QuantSettings(int4_block_size=args.int4_block_size,
                                                  int8_embeddings=args.int8_embeddings))
        bundle = _run(args.model, args.out, config)
    except (ValueError, FileNotFoundError, FileExistsError, ParityError) as exc:
        print(f"cof-export: error: {exc}", file=sys.stderr)
        return 2
    for variant, record in bundle.parity.items():
        summary = {k: record[k] for k in ("image_embeds_max_abs", "logits_max_abs", "top1_agreement",
                                         "greedy_identical")}
        print(f"{variant}: {json.dumps(summary)}{' FAILED ' + str(record['failures']) if record['failures'] else ''}")
    print(f"bundle written to {args.out} (default variant {bundle.default_variant}"
          f"{', FORCED past a parity failure' if bundle.forced else ''})")
    if args.target == "tensorrt":
        from .tensorrt import build_engines
        engines = build_engines(args.out)
        print("TensorRT engines: " + ", ".join(f"{k}={v.name}" for k, v in engines.items()))
    return 0


def _run(model: Path, out: Path, config: ExportConfig):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return export_bundle(model, out, config, progress=lambda stage: print(f"[cof-export] {stage}", file=sys.stderr))
    bar = tqdm(desc="cof-export", unit="stage", file=sys.stderr)

    def progress(stage: str) -> None:
        bar.set_postfix_str(stage)
        bar.update(1)

    try:
        return export_bundle(model, out, config, progress=progress)
    finally:
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
