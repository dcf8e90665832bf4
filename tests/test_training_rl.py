"""Rewards on hand-written turns, and one GRPO step with the zoom in the loop changes the weights."""

import pytest

from cof_training.rewards import (RewardConfig, Rollout, accuracy_reward, advantages, agar_rewards, format_reward,
                                  group_rewards, reward, token_f1)

ZOOM = '<think>too small</think> <tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 30, 40]}}\n</tool_call>'
RIGHT = "<think>a star</think> <answer>B</answer>"
WRONG = "<think>a heart</think> <answer>C</answer>"


def test_accuracy_and_format():
    assert accuracy_reward(Rollout((RIGHT,), "B")) == 1.0
    assert accuracy_reward(Rollout((ZOOM, RIGHT), "B")) == 1.0
    assert accuracy_reward(Rollout((WRONG,), "B")) == 0.0
    assert accuracy_reward(Rollout(("<think>x</think> <answer>(B) star</answer>",), "B")) == 1.0
    assert accuracy_reward(Rollout(("B",), "B")) == 0.0                      # no <answer>: no credit
    assert accuracy_reward(Rollout((ZOOM,), "B")) == 0.0                     # ended on a zoom
    assert format_reward(Rollout((ZOOM, RIGHT), "B")) == 1.0
    assert format_reward(Rollout(("<think>a</think><think>b</think> <answer>B</answer>",), "B")) == 1.0
    assert format_reward(Rollout(("<answer>B</answer>",), "B")) == 0.0        # no think
    assert format_reward(Rollout(("<think>a</think> <answer>B</answer> <answer>C</answer>",), "B")) == 0.0
    assert format_reward(Rollout((RIGHT, RIGHT), "B")) == 0.0                 # an answer is not a zoom turn
    assert format_reward(Rollout(("<think>a</think> B",), "B")) == 0.0


def test_weighted_reward_and_zoom_cost():
    assert reward(Rollout((RIGHT,), "B")) == pytest.approx(1.0)
    assert reward(Rollout((WRONG,), "B")) == pytest.approx(0.1)
    assert reward(Rollout(("junk",), "B")) == 0.0
    cfg = RewardConfig(zoom_cost=0.05)
    assert reward(Rollout((ZOOM, RIGHT), "B", needed_zooms=1), cfg) == pytest.approx(1.0)
    assert reward(Rollout((ZOOM, ZOOM, RIGHT), "B", needed_zooms=1), cfg) == pytest.approx(0.95)
    assert reward(Rollout((ZOOM, RIGHT), "B", needed_zooms=0), cfg) == pytest.approx(0.95)


def test_free_text_uses_token_f1():
    assert token_f1("a red star", "red star") == pytest.approx(0.8)
    assert accuracy_reward(Rollout(("<think>x</think> <answer>the red star</answer>",), "red star")) == 1.0
    assert accuracy_reward(Rollout(("<think>x</think> <answer>blue</answer>",), "red star")) == 0.0


def test_agar_relabels_inside_the_group():
    direct_ok, zoom_ok, zoom_bad, direct_bad = (RIGHT,), (ZOOM, RIGHT), (ZOOM, WRONG), (WRONG,)
    group = [Rollout(t, "B") for t in (direct_ok, zoom_ok, zoom_bad, direct_bad, ("junk",))]
    assert agar_rewards(group) == [1.0, 0.8, 0.5, 0.1, 0.0]
    only_zoom = [Rollout(t, "B") for t in (zoom_ok, zoom_bad, direct_bad)]
    assert agar_rewards(only_zoom) == [1.0, 0.5, 0.1]
    all_wrong = [Rollout(t, "B") for t in (zoom_bad, direct_bad)]
    assert agar_rewards(all_wrong) == [0.5, 0.0]
    assert group_rewards(group, RewardConfig(group_relabel=True)) == agar_rewards(group)


def test_advantages_are_group_normalised():
    adv = advantages([1.0, 0.0, 0.0, 1.0])
    assert sum(adv) == pytest.approx(0.0) and adv[0] == pytest.approx(-adv[1]) and adv[0] > 0
    assert advantages([0.5, 0.5]) == [0.0, 0.0]


def test_one_grpo_step_changes_the_weights(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import Qwen2_5_VLForConditionalGeneration

    from cof_edge.data import render_sample
    from cof_training.rl import GRPOConfig, SamplingEngine, backend_for, grpo_step, run_rollout
    from cof_training.tiny import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "m", tokenizer="small", seed=0)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir).eval()
    engine = SamplingEngine(backend_for(model, model_dir), temperature=1.0, seed=0)
    sample = render_sample(9, 0, native_size=(960, 540))
    options = dict(global_max_pixels=224 * 126, crop_max_pixels=112 * 112)
    s = run_rollout(engine, sample.image, sample.text, max_zooms=1, max_new_tokens=12, **options)
    assert len(s.generated) == len(s.token_ids) and any(s.generated) and not all(s.generated)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = GRPOConfig(group_size=3, max_new_tokens=12, max_zooms=1, lr=1e-2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    # a random model never answers, so every reward would be 0: reward length to get a non-zero advantage
    stats = grpo_step(model, optimizer, engine, [(sample.image, sample.text, sample.label, 1)], cfg, options,
                      reward_fn=lambda group: [float(len("".join(r.turns))) for r in group])
    assert stats["generated_tokens"] > 0 and stats["reward_std"] > 0
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed


def test_rl_command_saves_every_n_steps_and_records_the_run(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import json

    import cof_training.train_default as train_default
    from cof_training.rl import main
    from cof_training.tiny import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "m", tokenizer="small", seed=0)
    saved_steps, real_export = [], train_default.export_model

    def recording_export(model, init_dir, out, recipe):
        saved_steps.append(recipe["rl"]["steps"])
        real_export(model, init_dir, out, recipe)

    monkeypatch.setattr(train_default, "export_model", recording_export)
    out = tmp_path / "rl"
    assert main(["--model", str(model_dir), "--out", str(out), "--steps", "3", "--questions", "1",
                 "--group-size", "2", "--resolution", "224", "--save-every", "2"]) == 0
    assert saved_steps == [2, 3]
    recipe = json.loads((out / "RECIPE.json").read_text())
    assert recipe["rl"]["steps"] == 3 and [e["step"] for e in recipe["rl"]["log"]] == [1, 2, 3]
    assert "--save-every 2" in recipe["rl"]["command"]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
