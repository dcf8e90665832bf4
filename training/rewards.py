"""Rewards for multi-turn CoF RL (DESIGN §6): 0.9 × accuracy + 0.1 × format, an optional zoom-efficiency charge,
and the release's adaptive group-aware relabelling (AGAR) as an option. Pure Python; unit-tested.

A rollout is summarised as a `Rollout`: its assistant turns (text) and the ground truth. Accuracy is the option
letter when the ground truth is a letter (vsearch / V*), else token-F1 >= 0.5 (the release's rule for free text).
Format: every turn but the last is `<think>...</think>` then one tool call; the last is `<think>...</think>` blocks
then exactly one `<answer>...</answer>`; nothing but whitespace outside.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from cof_edge.actions import answer_letter, extract_answer

_THINK = r"(?:\s*<think>.*?</think>)+"
_ZOOM_TURN = re.compile(_THINK + r"\s*<tool_call>.*?</tool_call>\s*", re.DOTALL)
_ANSWER_TURN = re.compile(_THINK + r"\s*<answer>(?:(?!<answer>).)*?</answer>\s*", re.DOTALL)
_LETTER_ONLY = re.compile(r"^\(?[A-Z]\)?$")


@dataclass(frozen=True)
class RewardConfig:
    accuracy_weight: float = 0.9
    format_weight: float = 0.1
    zoom_cost: float = 0.0            # charged per zoom beyond `needed_zooms` (0: off, the release's reward)
    f1_threshold: float = 0.5
    group_relabel: bool = False       # AGAR (DESIGN §6) instead of the plain weighted sum


@dataclass(frozen=True)
class Rollout:
    turns: tuple[str, ...]
    truth: str
    needed_zooms: int = 0             # zooms the teacher needed (0: answering directly would do)

    @property
    def zooms(self) -> int:
        return max(0, len(self.turns) - 1)


def token_f1(prediction: str, truth: str) -> float:
    pred, gold = prediction.lower().split(), truth.lower().split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum(min(pred.count(t), gold.count(t)) for t in set(pred))
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def accuracy_reward(rollout: Rollout, cfg: RewardConfig = RewardConfig()) -> float:
    answer = extract_answer(rollout.turns[-1]) if rollout.turns else None
    if not answer or "<answer>" not in rollout.turns[-1]:
        return 0.0
    truth = rollout.truth.strip()
    if _LETTER_ONLY.match(truth):
        return float(answer_letter(answer) == truth.strip("()"))
    return float(token_f1(answer, truth) >= cfg.f1_threshold)


def format_reward(rollout: Rollout) -> float:
    if not rollout.turns:
        return 0.0
    *zooms, last = rollout.turns
    ok = all(_ZOOM_TURN.fullmatch(t) for t in zooms) and _ANSWER_TURN.fullmatch(last) is not None
    return float(ok)


def efficiency_penalty(rollout: Rollout, cfg: RewardConfig = RewardConfig()) -> float:
    return cfg.zoom_cost * max(0, rollout.zooms - rollout.needed_zooms)


def reward(rollout: Rollout, cfg: RewardConfig = RewardConfig()) -> float:
    return (cfg.accuracy_weight * accuracy_reward(rollout, cfg) + cfg.format_weight * format_reward(rollout)
            - efficiency_penalty(rollout, cfg))


def agar_rewards(group: Sequence[Rollout], cfg: RewardConfig = RewardConfig()) -> list[float]:
    """The release's adaptive group-aware reward, relabelled inside one group (DESIGN §6).

    Some direct answer correct: direct-correct 1.0 > zoom-correct 0.8 > zoom-wrong 0.5 > format-only 0.1 >
    direct-wrong 0. Only zooming answers correct: zoom-correct 1.0, zoom-wrong 0.5 (direct-wrong 0, format-only 0.1).
    All wrong: zoom 0.5, direct 0. "Format-only": a direct answer that is wrong but well formed (our reading).
    """
    acc = [accuracy_reward(r, cfg) > 0 for r in group]
    fmt = [format_reward(r) > 0 for r in group]
    zoomed = [r.zooms > 0 for r in group]
    direct_ok = any(a and not z for a, z in zip(acc, zoomed))
    any_ok = any(acc)
    out = []
    for a, f, z in zip(acc, fmt, zoomed):
        if not any_ok:
            out.append(0.5 if z else 0.0)
        elif a:
            out.append(1.0 if not z else (0.8 if direct_ok else 1.0))
        elif z:
            out.append(0.5)
        elif f:
            out.append(0.1)
        else:
            out.append(0.0)
    return out


def group_rewards(group: Sequence[Rollout], cfg: RewardConfig = RewardConfig()) -> list[float]:
    return agar_rewards(group, cfg) if cfg.group_relabel else [reward(r, cfg) for r in group]


def advantages(rewards: Sequence[float], eps: float = 1e-4, scale: bool = True) -> list[float]:
    """GRPO's group-normalised advantages: (r - mean) / (std + eps) (std unbiased, as TRL; `scale=False`: no std)."""
    n = len(rewards)
    mean = sum(rewards) / n
    if not scale or n < 2:
        return [r - mean for r in rewards]
    std = (sum((r - mean) ** 2 for r in rewards) / (n - 1)) ** 0.5
    return [(r - mean) / (std + eps) for r in rewards]
