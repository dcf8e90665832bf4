"""SFT: one step changes the weights, positions equal the runtime's and HF's, a killed run resumes exactly."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from tokenizers import Tokenizer

from cof_edge.protocol import TokenLayout
from cof_training.cache import build_cache, read_cache
from cof_training.presets import get_preset
from cof_training.sft import encode_example, image_processor_for, make_trainer, records_dataset, sft_config
from cof_training.tiny import build_tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    preset = get_preset("smoke")
    model_dir = build_tiny_model(root / "model", tokenizer="small", spec=preset.spec, seed=0)
    build_cache(preset, root / "cache", 0, 1, progress=False)
    return preset, model_dir, root / "cache"


def _parts(model_dir):
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir)
    layout = TokenLayout(Tokenizer.from_file(str(model_dir / "tokenizer.json")))
    return model, AutoTokenizer.from_pretrained(model_dir), layout, image_processor_for(model_dir)


def test_one_sft_step_changes_the_weights(smoke, tmp_path):
    preset, model_dir, cache = smoke
    model, tok, layout, improc = _parts(model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = sft_config(tmp_path / "out", preset, max_steps=1, save_steps=1000, disable_tqdm=True)
    trainer = make_trainer(model, tok, records_dataset(read_cache(cache)), args, layout, improc)
    trainer.train()
    after = trainer.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("visual" in k for k in changed) and any("language_model" in k or "layers" in k for k in changed)
    assert trainer.state.global_step == 1


def test_labels_cover_only_assistant_turns_and_positions_match_hf(smoke):
    preset, model_dir, cache = smoke
    model, _, layout, improc = _parts(model_dir)
    traj = next(c for c in read_cache(cache) if len(c.record["turns"]) == 2).load()
    ex = encode_example(layout, improc, traj)
    ids, labels = ex["input_ids"], ex["labels"]
    im_end = layout.special.im_end
    assert (labels[labels != -100] == ids[labels != -100]).all()
    assert int((labels == im_end).sum()) == len(traj.turns)          # each turn's <|im_end|> is learned
    assert int((labels == layout.special.image_pad).sum()) == 0
    # transformers builds the same 3-D positions from mm_token_type_ids (and 1-D ones without them)
    mm = (ids == model.config.image_token_id).int()[None]
    hf_pos, _ = model.model.get_rope_index(ids[None], mm_token_type_ids=mm, image_grid_thw=ex["image_grid_thw"],
                                           attention_mask=torch.ones_like(ids)[None])
    assert torch.equal(hf_pos[:, 0], ex["position_ids"])
    with torch.no_grad():
        ours = model(input_ids=ids[None], position_ids=ex["position_ids"][:, None], pixel_values=ex["pixel_values"],
                     image_grid_thw=ex["image_grid_thw"]).logits
        theirs = model(input_ids=ids[None], mm_token_type_ids=mm, pixel_values=ex["pixel_values"],
                       image_grid_thw=ex["image_grid_thw"]).logits
        text_only = model(input_ids=ids[None], pixel_values=ex["pixel_values"],
                          image_grid_thw=ex["image_grid_thw"]).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, text_only, atol=1e-3)   # the silent fallback the collator avoids


def test_collator_encodes_with_the_presets_system_prompt(smoke):
    from cof_training.sft import RecordCollator, record_rows

    preset, model_dir, cache = smoke
    _, _, layout, improc = _parts(model_dir)
    record = read_cache(cache)[0]
    rows = record_rows([record])
    short = "Zoom in when the answer is small."
    batch = RecordCollator(layout, improc, layout.special.end_of_text, system_prompt=short)(rows)
    release = RecordCollator(layout, improc, layout.special.end_of_text)(rows)
    expected = encode_example(layout, improc, record.load(), system_prompt=short)
    assert batch["input_ids"][0].tolist() == expected["input_ids"].tolist()
    assert torch.equal(batch["position_ids"][:, 0], expected["position_ids"])
    assert release["input_ids"].shape[1] - batch["input_ids"].shape[1] > 200


def _complete(ckpt: Path) -> bool:
    return (ckpt / "trainer_state.json").is_file() and (ckpt / "optimizer.pt").is_file()


def test_killed_run_resumes_step_and_optimizer(tmp_path):
    from transformers import TrainerCallback

    from cof_training.train_default import main

    work, out = tmp_path / "work", tmp_path / "out"
    cmd = [sys.executable, "-m", "cof_training.train_default", "--preset", "smoke", "--out", str(out),
           "--work-dir", str(work), "--max-steps", "400", "--save-steps", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not _complete(work / "checkpoints" / "checkpoint-2"):
            time.sleep(0.2)
        time.sleep(0.3)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0, "the run should have been killed mid-way"
    ckpts = sorted((p for p in (work / "checkpoints").glob("checkpoint-*")), key=lambda p: int(p.name.split("-")[1]))
    for p in ckpts:
        if not _complete(p):
            shutil.rmtree(p)        # a checkpoint cut mid-write
    latest = max((p for p in ckpts if p.exists()), key=lambda p: int(p.name.split("-")[1]))
    step = int(latest.name.split("-")[1])
    assert step >= 2 and (out / "RECIPE.json").is_file()   # a usable model was exported at the first save
    saved = torch.load(latest / "optimizer.pt", weights_only=False)

    seen = {}

    class Probe(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            if not seen:
                seen["step"] = state.global_step
                seen["optim"] = {k: {n: v.clone() if torch.is_tensor(v) else v for n, v in s.items()}
                                 for k, s in optimizer.state_dict()["state"].items()}

    main(["--preset", "smoke", "--out", str(out), "--work-dir", str(work), "--resume", "--max-steps", str(step + 1),
          "--save-steps", "2", "--no-progress", "--set", "logging_steps=3"], extra_callbacks=[Probe()])
    assert seen["step"] == step
    assert seen["optim"].keys() == saved["state"].keys() and saved["state"]
    for k, s in saved["state"].items():
        for name, value in s.items():
            assert torch.equal(torch.as_tensor(seen["optim"][k][name]), torch.as_tensor(value)), (k, name)
    import json

    recipe = json.loads((out / "RECIPE.json").read_text())
    assert recipe["steps"] == step + 1 and recipe["config"]["logging_steps"] == 3     # --set reached the preset


def test_preset_overrides_from_the_command_line_are_typed_and_checked():
    from cof_training.presets import parse_overrides

    assert parse_overrides(["copy_warmup_steps=3000", "lr=1e-3", "lora=true", "quantization=none",
                            "tokenizer=small-numbers"]) == {"copy_warmup_steps": 3000, "lr": 0.001, "lora": True,
                                                            "quantization": None, "tokenizer": "small-numbers"}
    for bad, message in [("copy_warmup_steps", "FIELD=VALUE"), ("no_such_field=1", "FIELD=VALUE"),
                         ("lora=maybe", "true or false"), ("resolutions=224", "cannot be set"),
                         ("max_steps=many", "invalid literal")]:
        with pytest.raises(ValueError, match=message):
            parse_overrides([bad])


def test_drills_label_only_the_lookups_and_carry_no_image(smoke):
    from cof_training.drills import drill_example, drill_text, lookup_token_ids

    preset, model_dir, cache = smoke
    _, _, layout, _ = _parts(model_dir)
    lookups = lookup_token_ids(layout)
    names = {layout.tokenizer.id_to_token(i) for i in lookups}
    assert {"Ġred", "Ġpink", ">A", ">D"} <= names and len(lookups) == 12
    for record in read_cache(cache):
        traj = record.load()
        ex = drill_example(layout, traj, lookups)
        ids, labels = ex["input_ids"].tolist(), ex["labels"].tolist()
        prompt, reply = drill_text(traj)
        reply_ids = layout.encode(reply)
        assert reply == traj.turns[-1] and ids[-len(reply_ids):] == reply_ids
        assert layout.special.image_pad not in ids and "system" not in layout.decode(ids, skip_special_tokens=False)
        labelled = [t for t in labels if t != -100]
        assert labelled == [t for t in reply_ids if t in lookups] and labelled   # a colour word at least
        assert all(layout.tokenizer.id_to_token(t) in names for t in labelled)
        assert torch.equal(ex["position_ids"], torch.arange(len(ids)).expand(3, -1))


def test_collator_adds_drill_rows_without_images(smoke):
    from cof_training.sft import RecordCollator, record_rows

    preset, model_dir, cache = smoke
    _, _, layout, improc = _parts(model_dir)
    rows = record_rows(read_cache(cache)[:2])
    plain = RecordCollator(layout, improc, layout.special.end_of_text)(rows)
    drilled = RecordCollator(layout, improc, layout.special.end_of_text, drills=1)(rows)
    assert drilled["input_ids"].shape[0] == 3 and plain["input_ids"].shape[0] == 2
    assert torch.equal(drilled["pixel_values"], plain["pixel_values"])
    assert torch.equal(drilled["image_grid_thw"], plain["image_grid_thw"])
    assert torch.equal(drilled["input_ids"][:2, :plain["input_ids"].shape[1]], plain["input_ids"])
    assert int((drilled["labels"][2:] != -100).sum()) > 0


def test_drill_warm_up_lowers_the_lookup_loss_and_runs_once_per_work_dir(smoke, tmp_path, monkeypatch):
    import dataclasses

    from cof_training import drills
    from cof_training.train_default import drilled_init

    preset, model_dir, _ = smoke
    cache = build_cache(preset, tmp_path / "cache", 0, 5, progress=False)     # ~15 questions, all 8 colours
    preset = dataclasses.replace(preset, drill_warmup_steps=8, drill_batch_size=8, lr=2e-3)
    monkeypatch.setattr(drills, "warm_up", _with_held_out(drills.warm_up, 3))
    out, report = drilled_init(model_dir, tmp_path / "drilled", cache, preset, progress=False)
    assert report["held_out_lookup_ce_after"] < report["held_out_lookup_ce_before"] - 1, report
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    monkeypatch.setattr(drills, "warm_up", lambda *a, **k: pytest.fail("the warm-up ran twice"))
    assert drilled_init(model_dir, tmp_path / "drilled", cache, preset, progress=False) == (out, report)


def _with_held_out(warm_up, held_out):
    return lambda *a, **k: warm_up(*a, **{**k, "held_out": held_out})
