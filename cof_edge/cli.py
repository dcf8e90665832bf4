"""`cof-edge`: ask a question of an image with zoom reasoning, make synthetic data, run the demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .options import AskOptions

DEFAULT_BUNDLE = Path(__file__).parent / "default_bundle"
OPTION_FLAGS = ("max_zooms", "max_new_tokens", "global_max_pixels", "global_min_pixels", "crop_max_pixels",
                "crop_min_pixels", "min_crop_side")


def _add_model_flags(parser: argparse.ArgumentParser, model_required: bool) -> None:
    source = parser.add_mutually_exclusive_group(required=model_required)
    source.add_argument("--bundle", type=Path, help="cof-edge bundle directory (ONNX Runtime; made by cof-export)")
    source.add_argument("--model", type=Path,
                        help="Hugging Face Qwen2.5-VL checkpoint directory, run with transformers (needs torch)")
    parser.add_argument("--providers", default="cpu",
                        help="ONNX Runtime providers in order of preference, e.g. tensorrt,cuda,cpu (default cpu)")
    parser.add_argument("--variant", default=None, help="bundle variant, e.g. int8 or fp32 (default: the bundle's)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the backend")
    defaults = AskOptions()
    for name in OPTION_FLAGS:
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                            help=f"(default {getattr(defaults, name)})")
    parser.add_argument("--json", action="store_true", help="print the result with its trace as JSON")
    parser.add_argument("--trace", type=Path, default=None, help="write the image with each zoom box drawn here")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cof-edge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    ask = commands.add_parser("ask", help="answer a question about an image, zooming where needed")
    _add_model_flags(ask, model_required=True)
    ask.add_argument("--image", type=Path, required=True)
    ask.add_argument("--question", required=True)

    demo = commands.add_parser("demo", help="run the loop on a generated 4K visual-search scene")
    _add_model_flags(demo, model_required=False)
    demo.add_argument("--image", type=Path, default=None, help="your own image (with --question)")
    demo.add_argument("--question", default=None)
    demo.add_argument("--seed", type=int, default=0, help="which generated scene")
    demo.add_argument("--out", type=Path, default=Path("cof-demo.png"), help="annotated image to write")

    data = commands.add_parser("data", help="synthetic data")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    vsearch = data_commands.add_parser("vsearch", help="write a synthetic visual-search set in V*'s layout")
    vsearch.add_argument("--n", type=int, required=True, help="number of questions")
    vsearch.add_argument("--out", type=Path, required=True)
    vsearch.add_argument("--seed", type=int, default=0)
    vsearch.add_argument("--resolution", type=int, default=None, help="long side of the written images (default 3840)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "ask":
            return _ask(args, args.image, args.question)
        if args.command == "demo":
            return _demo(args)
        if args.command == "data":
            from .data import run_vsearch_cli
            out = run_vsearch_cli(n=args.n, out=str(args.out), seed=args.seed, resolution=args.resolution)
            print(f"wrote {args.n} questions to {out}")
            return 0
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"cof-edge: error: {exc}", file=sys.stderr)
        return 2
    return 1


def _engine(args):
    from .engine import FocusEngine

    if args.bundle is not None:
        providers = tuple(p.strip() for p in args.providers.split(",") if p.strip())
        return FocusEngine.load(args.bundle, providers=providers, threads=args.threads, variant=args.variant)
    return FocusEngine.from_pretrained(args.model, threads=args.threads)


def _overrides(args) -> dict:
    return {name: getattr(args, name) for name in OPTION_FLAGS if getattr(args, name) is not None}


def _ask(args, image, question: str, expected: str | None = None) -> int:
    from .images import load_image
    from .trace_image import save_trace

    engine = _engine(args)
    original = load_image(image)
    if not args.json:
        print(f"question: {question}")
    result = engine.ask(original, question, on_step=None if args.json else _print_step, **_overrides(args))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.chain_lines()[-1])
        if expected is not None:
            print(f"expected: {expected}")
    if args.trace is not None:
        path = save_trace(original, result, args.trace)
        print(f"trace written to {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _print_step(step) -> None:
    print(step.line(), flush=True)


def _demo(args) -> int:
    if args.model is None and args.bundle is None:
        args.bundle = DEFAULT_BUNDLE
        if not (DEFAULT_BUNDLE / "cof.json").is_file():
            raise FileNotFoundError(f"the default bundle is missing from this install ({DEFAULT_BUNDLE}): reinstall "
                                    f"cof-edge, or pass --bundle DIR / --model DIR")
    if (args.image is None) != (args.question is None):
        raise ValueError("--image and --question go together")
    if args.trace is None:
        args.trace = args.out
    if args.image is not None:
        return _ask(args, args.image, args.question)
    from .data import render_sample

    sample = render_sample(seed=args.seed, index=0)
    print(f"scene: generated {sample.image.width}x{sample.image.height} visual-search image (seed {args.seed})")
    if _random_weights(args):
        print("note: this is a tiny RANDOM model (no trained default model ships yet): its chain and answer are noise")
    return _ask(args, sample.image, sample.text, expected=f"{sample.label} ({sample.answer_text})")


def _random_weights(args) -> bool:
    if args.bundle is not None:
        from .bundle import load_bundle

        return bool(load_bundle(args.bundle).exporter.get("random_weights"))
    return (args.model / "tiny_spec.json").is_file()


if __name__ == "__main__":
    sys.exit(main())
