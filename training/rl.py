"""Multi-turn GRPO with the zoom in the loop: rollouts by our `FocusEngine`, GRPO's loss on the exact runtime inputs.

Why not TRL's `GRPOTrainer` as is (trl 1.16, checked here): its VLM path tokenizes prompts with an
`AutoProcessor`, which for Qwen2.5-VL needs torchvision (DESIGN §4); with `rollout_func` (the escape hatch) the
loss forward gets no images at all (`images = None` on that path, no `pixel_values`/`image_grid_thw`) and 1-D
positions, so the policy's log-probs would be computed without the global view and the crops; and its `tools`
loop renders tool images through the chat template, not our protocol (crop from the ORIGINAL image, mapped from
the global-view box, at the runtime's budgets, M-RoPE positions from the host cursor). So this module keeps GRPO's
objective (TRL's defaults: group-normalised advantages, clipped ratio, `beta=0` i.e. no KL term unless asked,
token-level normalisation) and computes it here:

1. rollouts: `SamplingEngine` (FocusEngine with temperature sampling) runs each question `group_size` times on the
   policy itself (in memory), recording the exact token ids fed, which of them the model generated, and the views;
2. rewards: training/rewards.py (0.9 × accuracy + 0.1 × format, optional zoom charge, optional AGAR);
3. loss: one forward over each whole conversation with the runtime's pixel values and M-RoPE positions; the
   per-token log-probs of the generated tokens, weighted by the advantage (clipped surrogate; one update per batch,
   so the ratio is 1 and the clip only matters with `updates_per_batch > 1`).

    python -m cof_training.rl --model training/default_model --steps 100 --out runs/rl [--save-every 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cof_edge import FocusEngine
from cof_edge.backends.transformers_backend import TransformersBackend
from cof_edge.generate import decode_one_token
from cof_edge.images import render_view
from cof_edge.mrope import MRopeCursor

from .rewards import RewardConfig, Rollout, advantages, group_rewards


@dataclass
class GRPOConfig:
    group_size: int = 6               # the release's group size
    questions_per_step: int = 2
    lr: float = 1e-5
    temperature: float = 1.0
    clip_eps: float = 0.2
    beta: float = 0.0                 # KL to the reference (0: TRL's default, no reference model needed)
    max_zooms: int = 2
    max_new_tokens: int = 96
    seed: int = 0
    reward: RewardConfig = field(default_factory=RewardConfig)


def backend_for(model, model_dir) -> TransformersBackend:
    """A runtime backend around an in-memory model (the policy being trained)."""
    from tokenizers import Tokenizer

    from .sft import image_processor_for

    backend = TransformersBackend.__new__(TransformersBackend)
    backend.device = next(model.parameters()).device
    backend.model = model
    backend.tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    backend.image_processor = image_processor_for(model_dir)
    backend.max_context = model.config.text_config.max_position_embeddings
    backend.cache_id = "policy-0"  # renamed every GRPO step: the weights change, cached crop embeddings go stale
    return backend


class SamplingEngine(FocusEngine):
    """FocusEngine that samples (temperature) and records which conversation tokens the model generated."""

    def __init__(self, backend, options=None, temperature: float = 1.0, seed: int = 0):
        super().__init__(backend, options)
        self.temperature, self.rng = temperature, np.random.default_rng(seed)

    def respond(self, state, logits) -> list[int]:
        stop_ids, limit = self.layout.special.stop_ids, getattr(state, "turn_token_limit", state.options.max_new_tokens)
        tokens = []
        while True:
            z = np.asarray(logits, dtype=np.float64) / max(self.temperature, 1e-6)
            p = np.exp(z - z.max())
            tokens.append(int(self.rng.choice(len(p), p=p / p.sum())))
            if tokens[-1] in stop_ids or len(tokens) >= limit:
                break
            logits = decode_one_token(state.session, state.cursor, tokens[-1])
        spans = state.__dict__.setdefault("generated_spans", [])
        spans.append((len(state.token_ids), len(tokens)))  # token_ids holds the prompt so far; the reply follows
        return tokens


@dataclass
class Sample:
    token_ids: list[int]
    generated: list[bool]
    images: list
    grids: list[tuple[int, int, int]]
    turns: tuple[str, ...]


def run_rollout(engine: SamplingEngine, image, question: str, **options) -> Sample:
    state = engine.start(image, question, **options)
    while not state.done:
        engine.step(state)
    mask = [False] * len(state.token_ids)
    for start, n in state.__dict__.get("generated_spans", []):
        for i in range(start, start + n):
            mask[i] = True
    original = state.source.image if hasattr(state, "source") else state.original
    images = [render_view(original, v) for v in state.views]
    grids = [(1, v.size[1] // 14, v.size[0] // 14) for v in state.views]
    return Sample(list(state.token_ids), mask, images, grids, tuple(s.text for s in state.result.steps))


def sequence_logps(model, sample: Sample, image_processor, image_token_id: int) -> torch.Tensor:
    """Log-probs of the generated tokens under `model`, with the runtime's pixels and M-RoPE positions."""
    ids = sample.token_ids
    positions = MRopeCursor().positions(ids, sample.grids, image_token_id)
    pix = image_processor(images=sample.images, do_resize=False, return_tensors="pt")
    input_ids = torch.tensor([ids], dtype=torch.long)
    out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                position_ids=torch.from_numpy(positions)[:, None, :], pixel_values=pix["pixel_values"],
                image_grid_thw=pix["image_grid_thw"], use_cache=False)
    logp = torch.log_softmax(out.logits[0, :-1].float(), dim=-1).gather(1, input_ids[0, 1:, None])[:, 0]
    mask = torch.tensor(sample.generated[1:], dtype=torch.bool)
    return logp[mask]


def grpo_step(model, optimizer, engine: SamplingEngine, questions, cfg: GRPOConfig, options: dict,
              reward_fn: Callable[[list[Rollout]], list[float]] | None = None, ref_model=None) -> dict:
    """One GRPO update: `questions` = [(image, text, label, needed_zooms)], `group_size` rollouts each."""
    model.eval()
    engine.backend.cache_id = f"policy-{uuid.uuid4().hex}"  # new weights: no cached crop embedding may be reused
    groups = []
    for image, text, label, needed in questions:
        samples = [run_rollout(engine, image, text, max_zooms=cfg.max_zooms, max_new_tokens=cfg.max_new_tokens,
                               **options) for _ in range(cfg.group_size)]
        rollouts = [Rollout(s.turns, label, needed) for s in samples]
        rewards = reward_fn(rollouts) if reward_fn else group_rewards(rollouts, cfg.reward)
        groups.append((samples, rewards, advantages(rewards)))
    model.train()
    improc, image_token = engine.backend.image_processor, model.config.image_token_id
    optimizer.zero_grad()
    total_tokens = sum(sum(s.generated[1:]) for samples, _, _ in groups for s in samples)
    loss_value = 0.0
    for samples, _, advs in groups:
        for s, adv in zip(samples, advs):
            logp = sequence_logps(model, s, improc, image_token)
            if logp.numel() == 0:
                continue
            ratio = torch.exp(logp - logp.detach())
            surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv)
            loss = -surrogate.sum()
            if cfg.beta and ref_model is not None:
                with torch.no_grad():
                    ref = sequence_logps(ref_model, s, improc, image_token)
                loss = loss + cfg.beta * (torch.exp(ref - logp) - (ref - logp) - 1).sum()
            loss = loss / max(1, total_tokens)
            loss.backward()
            loss_value += float(loss.detach())
    optimizer.step()
    model.eval()
    flat = [r for _, rewards, _ in groups for r in rewards]
    zooms = [len(s.turns) - 1 for samples, _, _ in groups for s in samples]
    return {"loss": loss_value, "reward_mean": float(np.mean(flat)), "reward_std": float(np.std(flat)),
            "zooms_mean": float(np.mean(zooms)), "generated_tokens": total_tokens}


def main(argv=None) -> int:
    from transformers import Qwen2_5_VLForConditionalGeneration

    from cof_edge.data import render_sample, resize_to_long_side

    from cof_edge.options import recipe_ask_options
    from .train_default import export_model

    p = argparse.ArgumentParser(prog="python -m cof_training.rl", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("training/default_model"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--group-size", type=int, default=6)
    p.add_argument("--questions", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--zoom-cost", type=float, default=0.0)
    p.add_argument("--agar", action="store_true")
    p.add_argument("--data-seed", type=int, default=2000)
    p.add_argument("--resolution", type=int, default=3840)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-every", type=int, default=20,
                   help="write the policy to --out every this many steps too (a killed run keeps its last save)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = GRPOConfig(group_size=args.group_size, questions_per_step=args.questions, lr=args.lr,
                     reward=RewardConfig(zoom_cost=args.zoom_cost, group_relabel=args.agar))
    torch.manual_seed(cfg.seed)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    engine = SamplingEngine(backend_for(model, args.model), temperature=cfg.temperature, seed=cfg.seed)
    budgets = recipe_ask_options(args.model)
    t0, index, log = time.time(), 0, []
    recipe = json.loads((args.model / "RECIPE.json").read_text()) if (args.model / "RECIPE.json").is_file() else {}

    def save(steps_done: int) -> None:
        recipe["rl"] = {"config": asdict(cfg), "steps": steps_done, "wall_time_s": round(time.time() - t0, 1),
                        "data_seed": args.data_seed, "resolution": args.resolution, "log": log,
                        "command": "python -m cof_training.rl " + " ".join(argv if argv is not None else sys.argv[1:])}
        export_model(model, args.model, args.out, recipe)

    for step in range(args.steps):
        questions = []
        for _ in range(cfg.questions_per_step):
            s = render_sample(args.data_seed, index)
            index += 1
            questions.append((resize_to_long_side(s.image, args.resolution), s.text, s.label,
                              1 if s.category == "direct_attributes" else 0))
        stats = grpo_step(model, optimizer, engine, questions, cfg, budgets)
        stats["step"] = step + 1
        log.append(stats)
        print(json.dumps(stats), flush=True)
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.steps:
            save(step + 1)
    save(args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
