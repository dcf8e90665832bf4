"""Train a CoF model from a preset; the default model ships from `--preset cpu-default`.

    python -m cof_training.train_default --preset cpu-default --out training/default_model [--resume]

Steps: build the random init (small tokenizer, `preset.spec`) → pre-render the vsearch trajectory cache (unless
`--cache` points at one, possibly still growing) → `preset.vision_warmup_steps` of vision drills
(training/vision_drills.py) → `preset.symbol_warmup_steps` of symbol drills (training/symbol_drills.py) →
`preset.point_first_steps` of pointing drills on the fresh decoder →
`preset.drill_warmup_steps` of retrieval drills (training/drills.py) →
`preset.copy_warmup_steps` of box copy drills → `preset.point_warmup_steps` of pointing drills (both
training/pointing_drills.py) → `preset.answer_warmup_steps` of answer drills (training/answer_drills.py); each stage
once per work dir
(`--warm-up-only` stops after them) → TRL SFTTrainer (training/sft.py) with checkpoints every
`save_steps` (weights, optimizer, scheduler, RNG, step) under `--work-dir/checkpoints` → `--resume` continues from
the latest. Each checkpoint is also exported to `--out` as a plain HF directory (weights, tokenizer, image processor)
with `RECIPE.json` (preset, budgets the runtime must use, seeds, steps, wall time, command), so a usable model exists
from the first save on. Run it in the background: `nohup python -m cof_training.train_default ... &`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

HF_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json")


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    return Path(get_last_checkpoint(str(ckpt_dir))) if ckpt_dir.is_dir() and get_last_checkpoint(str(ckpt_dir)) else None


def export_model(model, init_dir: Path, out: Path, recipe: dict) -> None:
    """A plain HF directory the runtime loads: weights (LoRA merged), generation config, tokenizer, processor."""
    out.mkdir(parents=True, exist_ok=True)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(model, "merge_and_unload"):
        import copy

        base = copy.deepcopy(model).merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    base.save_pretrained(str(tmp), safe_serialization=True)
    for name in HF_FILES:
        if (init_dir / name).is_file():
            shutil.copy(init_dir / name, tmp / name)
    (tmp / "RECIPE.json").write_text(json.dumps(recipe, indent=2, default=str), encoding="utf-8")
    for f in tmp.iterdir():  # replace file by file: a reader never sees a half-written directory for long
        f.replace(out / f.name)
    tmp.rmdir()


def freeze_tower(model) -> None:
    """Leave the vision tower as the tower stages made it: a decoder learns to read its features, and moving them
    later costs the box (training/README.md, "Reading the crop")."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.model.visual.requires_grad_(False)


def warmed_init(init: Path, out: Path, stage: str, train, frozen_tower: bool = False) -> tuple[Path, dict]:
    """A curriculum stage before SFT: `train(model, init)` → report, on the model at `init`, saved to `out` once
    (a resumed run finds it and skips the stage); `frozen_tower` leaves the vision tower as it is."""
    report_file = out / f"{stage}.json"
    if report_file.is_file():
        return out, json.loads(report_file.read_text())
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(init, dtype=torch.float32)
    if frozen_tower:
        freeze_tower(model)
    report = train(model, init)
    print(f"{stage}: {report}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    for name in HF_FILES:
        if (init / name).is_file():
            shutil.copy(init / name, tmp / name)
    (tmp / report_file.name).write_text(json.dumps(report))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out, report


def vision_drilled_init(init: Path, out: Path, preset, progress: bool = True) -> tuple[Path, dict]:
    """Stage 1 (training/vision_drills.py): the vision tower learns where tags are and what they show."""
    from .sft import image_processor_for
    from .vision_drills import warm_up_vision

    return warmed_init(init, out, "vision_warmup", lambda model, src: warm_up_vision(
        model, image_processor_for(src), preset, preset.vision_warmup_steps, scenes=preset.vision_drill_scenes,
        lr=preset.lr, seed=preset.seed, position_weight=preset.vision_position_weight,
        symbol_weight=preset.vision_symbol_weight, legible_side=preset.vision_legible_side or None, progress=progress))


def drilled_init(init: Path, out: Path, cache: Path, preset, progress: bool = True,
                 frozen_tower: bool = False) -> tuple[Path, dict]:
    """Stage 2 (training/drills.py): retrieval drills on short text contexts."""
    from tokenizers import Tokenizer

    from cof_edge.protocol import TokenLayout

    from .cache import read_cache
    from .drills import warm_up

    def train(model, src):
        layout = TokenLayout(Tokenizer.from_file(str(src / "tokenizer.json")))
        return warm_up(model, layout, [c.load for c in read_cache(cache)], preset.drill_warmup_steps,
                       preset.drill_batch_size, preset.lr, seed=preset.seed, progress=progress)

    return warmed_init(init, out, "drill_warmup", train, frozen_tower=frozen_tower)


def zooming_split(cache: Path, held_out_scenes: int, held_out: int, category: str | None = None) -> tuple[list, list]:
    """Loaders of the cache's zooming trajectories (of `category`, if given): (train, held out); up to `held_out` of
    the last `held_out_scenes` scenes are held out (a scene's tags are where they are in all its trajectories)."""
    from .cache import read_cache

    zooming = [c for c in read_cache(cache) if len(c.record["turns"]) > 1 and category in (None, c.record["category"])]
    held_scenes = set(sorted({c.record["scene"] for c in zooming})[-held_out_scenes:])
    held = [c.load for c in zooming if c.record["scene"] in held_scenes][:held_out]
    return [c.load for c in zooming if c.record["scene"] not in held_scenes], held


def copied_init(init: Path, out: Path, cache: Path, preset, progress: bool = True, held_out_scenes: int = 10,
                held_out: int = 64, frozen_tower: bool = False) -> tuple[Path, dict]:
    """Stage 3 (pointing_drills.warm_up_copy): the box's second corner from its first, text only."""
    from tokenizers import Tokenizer

    from cof_edge.protocol import TokenLayout

    from .pointing_drills import warm_up_copy

    def train(model, src):
        layout = TokenLayout(Tokenizer.from_file(str(src / "tokenizer.json")))
        return warm_up_copy(model, layout, *zooming_split(cache, held_out_scenes, held_out), preset.copy_warmup_steps,
                            preset.point_batch_size, preset.lr, seed=preset.seed, reset_every=preset.drill_reset_every,
                            progress=progress)

    return warmed_init(init, out, "copy_warmup", train, frozen_tower=frozen_tower)


def pointed_init(init: Path, out: Path, cache: Path, preset, progress: bool = True, held_out_scenes: int = 10,
                 held_out: int = 64, steps: int | None = None, stage: str = "point_warmup",
                 frozen_tower: bool = False, symbol_probe: bool = False,
                 symbol_weight: float = 0.0) -> tuple[Path, dict]:
    """Stage 4 (training/pointing_drills.py): the box of each zooming trajectory's first reply, from its global view;
    up to `held_out` drills of the cache's last `held_out_scenes` scenes held out. `steps` (default
    `preset.point_warmup_steps`) and `stage` (the report's name) let the same drills run before the text stages.
    `symbol_probe`: the report also holds `probe_symbols` of the tower after the drills (what they left of the
    symbols that the symbol drills taught), on tag patches alone and in context (`tower_symbol_probe_in_context`:
    the tag's tokens in the whole crop, as the reply reads them). `symbol_weight` > 0: each step also trains the
    symbol drills' loss on their drills (`symbol_drill_items`), times it."""
    from tokenizers import Tokenizer

    from cof_edge.protocol import TokenLayout

    from .pointing_drills import warm_up_pointing
    from .sft import image_processor_for
    from .symbol_drills import probe_symbols

    def train(model, src):
        layout, image_processor = TokenLayout(Tokenizer.from_file(str(src / "tokenizer.json"))), image_processor_for(src)
        symbols = symbol_split(cache) if symbol_probe else None
        items, in_context = (symbol_drill_items(cache, preset, preset.point_symbol_in_context, progress)
                             if symbol_weight else ((), False))
        report = warm_up_pointing(model, layout, image_processor, *zooming_split(cache, held_out_scenes, held_out),
                                  preset.point_warmup_steps if steps is None else steps, preset.point_batch_size,
                                  preset.lr, preset.budgets.system_prompt, seed=preset.seed,
                                  reset_every=preset.drill_reset_every, attention_weight=preset.point_attention_weight,
                                  symbol_items=items, symbol_weight=symbol_weight, symbol_in_context=in_context,
                                  progress=progress)
        if symbol_probe:
            report["tower_symbol_probe"] = probe_symbols(model, image_processor, *symbols)
            report["tower_symbol_probe_in_context"] = probe_symbols(model, image_processor, *symbols, in_context=True)
        return report

    return warmed_init(init, out, stage, train, frozen_tower=frozen_tower)


def symbol_split(cache: Path) -> tuple[list, list]:
    """The zooming attribute trajectories that the symbol drills train on and hold out (the last 40 scenes, 256)."""
    from .trajectories import ATTRIBUTE

    return zooming_split(cache, 40, 256, category=ATTRIBUTE)


_RENDERED_SYMBOL_DRILLS: dict = {}


def symbol_drill_items(cache: Path, preset, in_context: bool, progress: bool = True) -> tuple[list, bool]:
    """What the symbol drills train on, and whether in context: the crops of `preset.symbol_scenes` scenes rendered
    for them (`symbol_drills.rendered_tag_crops`, in context; rendered once per run, for every stage that needs
    them), else `symbol_split`'s training part, cut as `in_context` asks."""
    from .symbol_drills import rendered_tag_crops, symbol_items

    if not preset.symbol_scenes:
        return symbol_items(symbol_split(cache)[0], in_context, progress=progress), in_context
    key = repr(preset)    # every field: the same preset renders the same crops
    if key not in _RENDERED_SYMBOL_DRILLS:
        _RENDERED_SYMBOL_DRILLS[key] = rendered_tag_crops(preset, preset.symbol_scenes, seed=preset.seed,
                                                          progress=progress)
    return _RENDERED_SYMBOL_DRILLS[key], True


def symbol_drilled_init(init: Path, out: Path, cache: Path, preset, progress: bool = True) -> tuple[Path, dict]:
    """Stage 1b (training/symbol_drills.py): the tower tells the symbols apart on the tags of the crops
    (`symbol_drill_items`), scored on `symbol_split`'s held-out part."""
    from .sft import image_processor_for
    from .symbol_drills import drills_per_step, warm_up_symbols

    def train(model, src):
        items, in_context = symbol_drill_items(cache, preset, False, progress)
        return warm_up_symbols(model, image_processor_for(src), items, symbol_split(cache)[1],
                               preset.symbol_warmup_steps, drills_per_step(in_context, preset.point_batch_size),
                               seed=preset.seed, in_context=in_context, progress=progress)

    return warmed_init(init, out, "symbol_warmup", train)


def answered_init(init: Path, out: Path, cache: Path, preset, progress: bool = True, held_out_scenes: int = 40,
                  held_out: int = 64, frozen_tower: bool = False) -> tuple[Path, dict]:
    """Stage 5 (training/answer_drills.py): the final reply's symbol and letter of each zooming attribute
    trajectory, read from its crop and its options; up to `held_out` of the last `held_out_scenes` scenes held out."""
    from tokenizers import Tokenizer

    from cof_edge.protocol import TokenLayout

    from .answer_drills import warm_up_answers
    from .sft import image_processor_for
    from .trajectories import ATTRIBUTE

    def train(model, src):
        layout = TokenLayout(Tokenizer.from_file(str(src / "tokenizer.json")))
        return warm_up_answers(model, layout, image_processor_for(src),
                               *zooming_split(cache, held_out_scenes, held_out, category=ATTRIBUTE),
                               preset.answer_warmup_steps, preset.point_batch_size, preset.lr,
                               preset.budgets.system_prompt, seed=preset.seed, reset_every=preset.drill_reset_every,
                               attention_weight=preset.answer_attention_weight,
                               reply_weight=preset.answer_reply_weight, progress=progress)

    return warmed_init(init, out, "answer_warmup", train, frozen_tower=frozen_tower)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cof_training.train_default", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu-default")
    p.add_argument("--out", type=Path, default=Path("training/default_model"))
    p.add_argument("--work-dir", type=Path, default=None, help="checkpoints + init + cache (default training/runs/PRESET)")
    p.add_argument("--cache", type=Path, default=None, help="trajectory cache dir (default WORK_DIR/cache)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in WORK_DIR")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--save-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--init", type=Path, default=None, help="start from this HF model dir instead of a random init")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--time-budget-min", type=float, default=None,
                   help="cosine LR over this much wall-clock time (resumes included), then stop and export")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a preset field, e.g. --set copy_warmup_steps=3000 (repeatable; kept in RECIPE.json)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--warm-up-only", action="store_true", help="run the pre-SFT stages (drills) and stop")
    p.add_argument("--background", action="store_true", help="detach: run in a new session, log to WORK_DIR/train.log")
    return p


def _detach(args, argv) -> int:
    import subprocess

    work = args.work_dir or Path("training/runs") / args.preset
    work.mkdir(parents=True, exist_ok=True)
    rest = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--background"]
    with open(work / "train.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cof_training.train_default", *rest], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    (work / "pid").write_text(str(proc.pid))
    print(f"training in the background: pid {proc.pid}, log {work / 'train.log'}")
    return 0


def main(argv=None, extra_callbacks=()) -> int:
    args = build_parser().parse_args(argv)
    from .presets import parse_overrides

    field_overrides = parse_overrides(args.set)    # a wrong --set fails here, not in a detached run's log
    if args.background:
        return _detach(args, argv)
    import torch

    from cof_edge.protocol import TokenLayout
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, TrainerCallback

    from .cache import build_cache, read_cache
    from .presets import get_preset
    from .sft import (apply_lora, cache_stream, image_processor_for, make_trainer, seed_everything, sft_config,
                      time_budget_schedule)
    from .tiny import build_tiny_model

    overrides = {k: v for k, v in dict(max_steps=args.max_steps, save_steps=args.save_steps,
                                       batch_size=args.batch_size, lr=args.lr, threads=args.threads,
                                       base_model=str(args.init) if args.init else None).items()
                 if v is not None}
    preset = get_preset(args.preset, **{**overrides, **field_overrides})
    torch.set_num_threads(preset.threads)
    seed_everything(preset.seed)
    work = args.work_dir or Path("training/runs") / preset.name
    work.mkdir(parents=True, exist_ok=True)
    ckpt_dir = work / "checkpoints"
    resume = latest_checkpoint(ckpt_dir) if args.resume else None

    if preset.base_model is None:
        init = work / "init"
        if not (init / "model.safetensors").is_file():
            build_tiny_model(init, tokenizer=preset.tokenizer, spec=preset.spec, seed=preset.seed)
    else:
        init = Path(preset.base_model)
    cache = args.cache or work / "cache"
    if not read_cache(cache):
        build_cache(preset, cache, 0, preset.scenes, progress=not args.no_progress)
    warm_up_report = vision_report = copy_report = point_report = point_first_report = None
    symbol_report = answer_report = None
    if preset.vision_warmup_steps:  # each stage once per work dir; a resumed run finds it
        init, vision_report = vision_drilled_init(init, work / "init-vision", preset, progress=not args.no_progress)
    if preset.symbol_warmup_steps:  # a tower stage: once the decoder reads the tower, moving it costs the box
        init, symbol_report = symbol_drilled_init(init, work / "init-symbols", cache, preset,
                                                  progress=not args.no_progress)
    frozen = False  # preset.freeze_tower: pointing needs the tower to learn with the decoder, so only after it
    if preset.point_first_steps:  # a fresh decoder attends to the image; one trained on text first does not
        init, point_first_report = pointed_init(
            init, work / "init-pointed-first", cache, preset, progress=not args.no_progress,
            steps=preset.point_first_steps, stage="point_first",
            symbol_probe=bool(preset.symbol_warmup_steps or preset.point_symbol_weight),
            symbol_weight=preset.point_symbol_weight)
        frozen = preset.freeze_tower
    if preset.drill_warmup_steps:
        init, warm_up_report = drilled_init(init, work / "init-drilled", cache, preset, progress=not args.no_progress,
                                            frozen_tower=frozen)
    if preset.copy_warmup_steps:
        init, copy_report = copied_init(init, work / "init-copied", cache, preset, progress=not args.no_progress,
                                        frozen_tower=frozen)
    if preset.point_warmup_steps:
        init, point_report = pointed_init(init, work / "init-pointed", cache, preset, progress=not args.no_progress,
                                          frozen_tower=frozen)
        frozen = preset.freeze_tower
    if preset.answer_warmup_steps:
        init, answer_report = answered_init(init, work / "init-answered", cache, preset, progress=not args.no_progress,
                                            frozen_tower=frozen)
    if args.warm_up_only:
        print(f"pre-SFT stages done: {init}")
        return 0

    load_kwargs = {"dtype": torch.bfloat16 if preset.bf16 else torch.float32}
    if preset.quantization == "4bit":  # QLoRA (CUDA only): settings in training/configs/qlora_7b.json
        if not torch.cuda.is_available():
            raise RuntimeError("4-bit QLoRA presets need CUDA")
        from transformers import BitsAndBytesConfig

        bnb = json.loads(Path(__file__).with_name("configs").joinpath("qlora_7b.json").read_text())["bnb"]
        bnb["bnb_4bit_compute_dtype"] = getattr(torch, bnb["bnb_4bit_compute_dtype"])
        load_kwargs["quantization_config"] = BitsAndBytesConfig(**bnb)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(init, **load_kwargs)
    if preset.lora:
        if preset.quantization:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=preset.gradient_checkpointing)
        model = apply_lora(model, preset.lora_r, preset.lora_alpha, preset.lora_targets)
    if frozen:
        freeze_tower(model)
    tokenizer = AutoTokenizer.from_pretrained(init)
    layout = TokenLayout(Tokenizer.from_file(str(init / "tokenizer.json")))
    start_step = int(resume.name.split("-")[-1]) if resume else 0
    dataset = cache_stream(cache, seed=preset.seed, start_step=start_step)

    wall_file = work / "wall_time.json"
    wall_before = json.loads(wall_file.read_text())["seconds"] if resume and wall_file.is_file() else 0.0
    t0 = time.time()
    n_params = sum(p.numel() for p in model.parameters())

    def recipe(step: int) -> dict:
        return {
            "preset": preset.name,
            "config": preset.to_dict(),
            "ask_options": dataclasses.asdict(preset.budgets),
            "trajectory": {"box_min_side": preset.box_min_side, "two_zoom_below": preset.two_zoom_below},
            "vision_warmup": vision_report,
            "drill_warmup": warm_up_report,
            "copy_warmup": copy_report,
            "point_first": point_first_report,
            "point_warmup": point_report,
            "symbol_warmup": symbol_report,
            "answer_warmup": answer_report,
            "params": n_params,
            "seeds": {"init": preset.seed, "train": preset.seed, "data": preset.data_seed},
            "steps": step,
            "examples_seen": step * preset.batch_size * preset.grad_accum,
            "wall_time_s": round(wall_before + time.time() - t0, 1),
            "time_budget_min": args.time_budget_min,
            "threads": preset.threads,
            "cache_records": len(read_cache(cache)),
            "command": " ".join(["python -m cof_training.train_default", *(argv if argv is not None else sys.argv[1:])]),
            "torch": torch.__version__,
        }

    class Export(TrainerCallback):
        def on_save(self, _args, state, control, model=None, **kwargs):
            wall_file.write_text(json.dumps({"seconds": wall_before + time.time() - t0, "step": state.global_step}))
            export_model(model, init, args.out, recipe(state.global_step))

    def elapsed() -> float:
        return wall_before + time.time() - t0

    callbacks, optimizers = [Export(), *extra_callbacks], (None, None)
    if args.time_budget_min:
        budget = args.time_budget_min * 60
        optimizers = time_budget_schedule(model, preset, budget, elapsed)

        class Deadline(TrainerCallback):
            def on_step_end(self, _args, state, control, **kwargs):
                if elapsed() >= budget:
                    control.should_training_stop = True
                    control.should_save = True

        callbacks.append(Deadline())
    targs = sft_config(ckpt_dir, preset, disable_tqdm=args.no_progress)
    trainer = make_trainer(model, tokenizer, dataset, targs, layout, image_processor_for(init), callbacks=callbacks,
                           optimizers=optimizers, system_prompt=preset.budgets.system_prompt, drills=preset.drills)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    trainer.save_model(str(ckpt_dir / "final"))
    wall_file.write_text(json.dumps({"seconds": wall_before + time.time() - t0, "step": trainer.state.global_step}))
    export_model(trainer.model, init, args.out, recipe(trainer.state.global_step))
    print(f"model written to {args.out} after {trainer.state.global_step} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
