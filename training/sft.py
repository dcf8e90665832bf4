"""SFT on CoF trajectories with TRL's `SFTTrainer`, fed pre-tokenized multi-image Qwen2.5-VL batches.

Why a custom collator with dataset preparation skipped: `SFTTrainer`'s own VLM path needs an `AutoProcessor`,
which for Qwen2.5-VL cannot be built without torchvision (DESIGN §4), and its chat-template tokenisation is not
the runtime's segment-by-segment tokenisation. So examples are encoded here, with the runtime's own code:
* token ids: `encode_turns` (cof_edge.protocol text, `TokenLayout`), labels -100 everywhere but the assistant
  turns (each turn's text and its `<|im_end|>`);
* positions: M-RoPE `position_ids` [3, B, S] from `cof_edge.mrope.MRopeCursor`, the runtime's positions. Without
  them (or `mm_token_type_ids`) transformers 5 silently falls back to 1-D text positions;
* pixels: `Qwen2VLImageProcessorPil(do_resize=False)` on the runtime's rendered views (sized by the runtime).
The dataset items carry no "image"/"images" key, so SFTTrainer treats the tokenizer as the processing class and
skips preparation (`dataset_kwargs={"skip_prepare_dataset": True}`); its loss (fused LM head, mean over label
tokens) and metrics (token accuracy, entropy) apply unchanged.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cof_edge.mrope import MRopeCursor
from cof_edge.protocol import TokenLayout

from .drills import drill_example, lookup_token_ids
from .trajectories import Trajectory, encode_trajectory


def image_processor_for(model_dir):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = Path(model_dir) / "preprocessor_config.json"
    return Qwen2VLImageProcessorPil.from_pretrained(model_dir) if path.is_file() else Qwen2VLImageProcessorPil()


def encode_example(layout: TokenLayout, image_processor, traj: Trajectory, max_length: int | None = None,
                   system_prompt: str | None = None) -> dict:
    """One trajectory → tensors: input_ids, labels, position_ids [3, S], pixel_values, image_grid_thw.

    `system_prompt`: the one the runtime will use for this model (`AskOptions.system_prompt`; None: the release's).
    """
    enc = encode_trajectory(layout, traj, system_prompt)
    if max_length is not None and len(enc.input_ids) > max_length:
        raise ValueError(f"trajectory of {len(enc.input_ids)} tokens exceeds max_length {max_length}")
    pix = image_processor(images=list(traj.images), do_resize=False, return_tensors="pt")
    grids = [tuple(int(v) for v in g) for g in pix["image_grid_thw"]]
    if grids != enc.image_grids:
        raise ValueError(f"processor grids {grids} differ from the runtime's {enc.image_grids}")
    positions = MRopeCursor().positions(enc.input_ids, grids, layout.special.image_pad)
    return {
        "input_ids": torch.tensor(enc.input_ids, dtype=torch.long),
        "labels": torch.tensor(enc.labels, dtype=torch.long),
        "position_ids": torch.from_numpy(positions),
        "pixel_values": pix["pixel_values"],
        "image_grid_thw": pix["image_grid_thw"],
    }


class CoFCollator:
    """Right-pads a list of `encode_example` dicts; images of the batch concatenated in sample order.

    Examples without `pixel_values` (text only: `drills.drill_example`) add rows and no images.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: Sequence[dict]) -> dict:
        n = max(len(e["input_ids"]) for e in examples)
        batch = len(examples)
        input_ids = torch.full((batch, n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, n), -100, dtype=torch.long)
        attention = torch.zeros((batch, n), dtype=torch.long)
        positions = torch.zeros((3, batch, n), dtype=torch.long)
        for i, e in enumerate(examples):
            m = len(e["input_ids"])
            input_ids[i, :m], labels[i, :m], attention[i, :m] = e["input_ids"], e["labels"], 1
            positions[:, i, :m] = e["position_ids"]
            if m < n:  # padding continues the positions (masked out anyway)
                positions[:, i, m:] = e["position_ids"].max() + 1 + torch.arange(n - m)
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "position_ids": positions}
        with_images = [e for e in examples if "pixel_values" in e]
        if with_images:
            batch["pixel_values"] = torch.cat([e["pixel_values"] for e in with_images])
            batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in with_images])
        return batch


class RecordCollator:
    """Dataset rows are trajectory records (JSON text + root dir, see training/cache.py); encoding happens here.

    TRL wants a `datasets` dataset; Arrow holds the small records, not pixel tensors. With `drills` > 0 the first
    `drills` trajectories of each batch also give a text-only retrieval drill (training/drills.py), as extra rows.
    """

    def __init__(self, layout: TokenLayout, image_processor, pad_token_id: int, system_prompt: str | None = None,
                 drills: int = 0):
        self.layout, self.image_processor, self.pad = layout, image_processor, CoFCollator(pad_token_id)
        self.system_prompt, self.drills = system_prompt, drills
        self.lookup_ids = lookup_token_ids(layout) if drills else frozenset()

    def __call__(self, rows: Sequence[dict]) -> dict:
        from .cache import CachedTrajectory

        trajectories = [CachedTrajectory(json.loads(r["record"]), Path(r["root"])).load() for r in rows]
        examples = [encode_example(self.layout, self.image_processor, traj, system_prompt=self.system_prompt)
                    for traj in trajectories]
        examples += [drill_example(self.layout, traj, self.lookup_ids) for traj in trajectories[:self.drills]]
        return self.pad(examples)


def record_rows(records) -> list[dict]:
    """`CachedTrajectory`s → rows of a `datasets.Dataset`."""
    return [{"record": json.dumps(c.record), "root": str(c.root)} for c in records]


def records_dataset(records):
    from datasets import Dataset as HFDataset

    return HFDataset.from_list(record_rows(records))


def _stream(root: str, seed: int, start_step: int, refresh: int):
    from .cache import read_cache

    rng = random.Random(seed * 1_000_003 + start_step)
    while True:
        records = read_cache(root)
        if not records:
            raise FileNotFoundError(f"no trajectory records in {root}")
        for _ in range(refresh):
            yield {"record": json.dumps(rng.choice(records).record), "root": str(root)}


def cache_stream(root, seed: int = 0, start_step: int = 0, refresh: int = 2000):
    """Endless random draws from a trajectory cache (training/cache.py) that may still be growing.

    The listing is re-read every `refresh` draws, so training can start while scenes are still being rendered.
    Seeded by (seed, start_step): a resumed run draws a fresh, reproducible stream (no replay of skipped batches).
    """
    from datasets import IterableDataset as HFIterable

    return HFIterable.from_generator(_stream, gen_kwargs=dict(root=str(root), seed=seed, start_step=start_step,
                                                              refresh=refresh))


def apply_lora(model, r: int = 16, alpha: int = 32, targets: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
               dropout: float = 0.05):
    """LoRA adapters (PEFT) on the language model's linear layers only (the vision tower stays frozen)."""
    from peft import LoraConfig, get_peft_model

    pattern = r".*language_model.*\.(" + "|".join(targets) + r")$"
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def sft_config(out_dir, preset, **overrides):
    from trl import SFTConfig

    kwargs = dict(
        output_dir=str(out_dir),
        max_steps=preset.max_steps,
        per_device_train_batch_size=preset.batch_size,
        gradient_accumulation_steps=preset.grad_accum,
        learning_rate=preset.lr,
        lr_scheduler_type="cosine",
        warmup_steps=preset.warmup_steps,
        weight_decay=preset.weight_decay,
        logging_steps=preset.logging_steps,
        save_steps=preset.save_steps,
        save_total_limit=preset.save_total_limit,
        save_strategy="steps",
        seed=preset.seed,
        data_seed=preset.seed,
        bf16=preset.bf16,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        packing=False,
        ignore_data_skip=True,          # the stream is reseeded by step on resume instead of replayed
        report_to="none",
        disable_tqdm=False,
        deepspeed=preset.deepspeed if torch.cuda.is_available() else None,
    )
    # TRL's SFTConfig turns gradient checkpointing ON by default (unlike transformers): ~30% more compute for
    # nothing on a small model, so the preset decides explicitly. (transformers 5 warns the flag is deprecated.)
    kwargs["gradient_checkpointing"] = preset.gradient_checkpointing
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def make_trainer(model, tokenizer, train_dataset, args, layout: TokenLayout, image_processor, callbacks=(),
                 optimizers=(None, None), system_prompt: str | None = None, drills: int = 0):
    """`SFTTrainer` over trajectory records, encoded by `RecordCollator` (see module docstring)."""
    from trl import SFTTrainer

    collator = RecordCollator(layout, image_processor, layout.special.end_of_text, system_prompt, drills)
    return SFTTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                      data_collator=collator, callbacks=list(callbacks), optimizers=optimizers)


def time_budget_schedule(model, preset, budget_s: float, elapsed):
    """AdamW + a cosine schedule over WALL-CLOCK time (`elapsed()` seconds of `budget_s`), linear warmup by step.

    On a shared CPU the step rate is unknown in advance; this anneals the learning rate by the deadline whatever
    the speed. The lambda is a closure, so a resumed scheduler keeps reading the clock (LambdaLR does not pickle it).
    """
    import math

    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": preset.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=preset.lr)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, preset.warmup_steps))
        frac = min(1.0, elapsed() / budget_s)
        return warm * max(0.0, 0.5 * (1 + math.cos(math.pi * frac)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
