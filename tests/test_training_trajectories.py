"""The trajectory builder writes exactly what the runtime feeds: tokens, positions and crop pixels."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from cof_edge import FocusEngine
from cof_edge.actions import ActionKind, parse_action
from cof_edge.data import render_sample
from cof_edge.geometry import View, plan_crop
from cof_edge.mrope import MRopeCursor
from cof_edge.options import AskOptions
from cof_edge.protocol import TokenLayout
from cof_training.tiny import build_small_tokenizer
from cof_training.trajectories import (ATTRIBUTE, SPATIAL, TrajectoryConfig, build_trajectory, conversation_text,
                                       encode_trajectory, from_vsearch, view_box)

OPTIONS = AskOptions(global_max_pixels=448 * 252, crop_max_pixels=224 * 224)
NATIVE = (1920, 1080)  # renders 10x faster than 3840x2160; the geometry is the same code


@pytest.fixture(scope="module", params=[False, True], ids=["digit_tokens", "number_tokens"])
def layout(request):
    return TokenLayout(build_small_tokenizer(whole_numbers=request.param))


@pytest.fixture(scope="module")
def samples():
    return {cat: next(s for s in (render_sample(5, i, native_size=NATIVE) for i in range(40)) if s.category == cat)
            for cat in (ATTRIBUTE, SPATIAL)}


class _ScriptedSession:
    def __init__(self, backend):
        self.backend = backend

    def forward(self, token_ids, positions, image_embeds):
        b = self.backend
        b.fed.extend(int(t) for t in token_ids)
        b.positions.append(np.asarray(positions))
        if len(image_embeds):
            b.reply = iter(b.replies.pop(0))
        logits = np.full(b.vocab, -1e9, dtype=np.float32)
        logits[next(b.reply)] = 0.0
        return logits


class ScriptedBackend:
    """Emits the given replies token by token and records everything the engine feeds it."""

    name = "scripted"
    max_context = None
    cache_id = "scripted"

    def __init__(self, tokenizer, replies):
        self.tokenizer, self.replies = tokenizer, [list(r) for r in replies]
        self.vocab = tokenizer.get_vocab_size()
        self.fed, self.positions, self.images, self.views = [], [], [], []

    def encode_image(self, image):  # the runtime's older backend protocol
        self.images.append(image.copy())
        return np.zeros((1, 1), dtype=np.float32)

    def encode_view(self, source, view):  # the runtime renders `view` of `source` as `render_view` does
        self.views.append(view)
        return self.encode_image(source.view(view))

    def new_session(self):
        return _ScriptedSession(self)


def _replay(layout, traj, image, options):
    replies = [layout.encode(t) + [layout.special.im_end] for t in traj.turns]
    backend = ScriptedBackend(layout.tokenizer, replies)
    result = FocusEngine(backend, options).ask(image, traj.text, max_zooms=3)
    return backend, result


@pytest.mark.parametrize("cfg", [
    TrajectoryConfig(options=OPTIONS),                                             # one zoom / direct spatial
    TrajectoryConfig(options=OPTIONS, two_zoom_below=1e9, visible_side=1e9),       # two zooms / zoom for spatial
    TrajectoryConfig(options=OPTIONS, visible_side=8.0),                           # spatial: one box for both
    TrajectoryConfig(options=OPTIONS, box_grid=28, visible_side=1e9),              # boxes on the token grid
], ids=["adaptive", "two_zooms", "spatial_box", "grid_boxes"])
@pytest.mark.parametrize("category", [ATTRIBUTE, SPATIAL])
def test_runtime_feeds_exactly_the_trajectory(layout, samples, cfg, category):
    sample = samples[category]
    traj = from_vsearch(sample, cfg=cfg)
    backend, result = _replay(layout, traj, sample.image, cfg.options)
    assert result.stop_reason == "answer" and result.answer == sample.label
    assert result.zooms == traj.zooms
    enc = encode_trajectory(layout, traj)
    assert backend.fed == enc.input_ids[:-1]          # the final <|im_end|> is sampled, never fed
    assert enc.input_ids == layout.encode(conversation_text(traj), [v.visual_tokens for v in traj.views])
    assert len(backend.images) == len(traj.images)
    assert not backend.views or backend.views == traj.views
    for ours, runtime in zip(traj.images, backend.images):
        assert ours.size == runtime.size and np.array_equal(np.asarray(ours), np.asarray(runtime))
    fed_positions = np.concatenate(backend.positions, axis=1)
    full = MRopeCursor().positions(enc.input_ids, enc.image_grids, layout.special.image_pad)
    assert np.array_equal(fed_positions, full[:, :-1])
    labelled = [t for t, l in zip(enc.input_ids, enc.labels) if l != -100]
    assert labelled == [t for turn in traj.turns for t in layout.encode(turn) + [layout.special.im_end]]


def test_runtime_and_training_use_the_models_own_system_prompt(layout, samples):
    options = OPTIONS.with_overrides(system_prompt="Zoom in when the answer is small.")
    cfg = TrajectoryConfig(options=options)
    sample = samples[ATTRIBUTE]
    traj = from_vsearch(sample, cfg=cfg)
    backend, result = _replay(layout, traj, sample.image, options)
    enc = encode_trajectory(layout, traj, options.system_prompt)
    assert result.answer == sample.label and backend.fed == enc.input_ids[:-1]
    release = encode_trajectory(layout, traj)
    assert len(release.input_ids) - len(enc.input_ids) > 200   # the release's tool prompt is ~260 small tokens
    assert release.labels[-len(enc.labels):] == enc.labels      # same replies, same labels


@pytest.mark.parametrize("grid", [0, 28])
def test_zoom_boxes_put_the_target_in_the_runtime_crop(grid):
    cfg = TrajectoryConfig(options=OPTIONS, box_grid=grid)
    seen = 0
    for i in range(12):
        sample = render_sample(11, i, native_size=NATIVE)
        traj = from_vsearch(sample, cfg=cfg)
        for turn, box in zip(traj.turns, traj.boxes):
            action = parse_action(turn)
            assert action.kind is ActionKind.ZOOM and list(action.box) == box
            assert all(float(v).is_integer() for v in action.box)
            region = plan_crop(box, traj.views[0], sample.image.size, OPTIONS.crop_settings).view.region
            tb = sample.target_boxes[0]
            assert region[0] <= tb[0] and region[1] <= tb[1] and region[2] >= tb[2] and region[3] >= tb[3]
            assert grid == 0 or all(v % grid == 0 for v in box)
            seen += 1
    assert seen > 0


def test_grid_boxes_are_whole_cells_nearest_the_centre():
    view = View(region=(0, 0, 448, 252), size=(448, 252))
    assert view_box([100, 100, 110, 110], view, 48, grid=28) == [84, 84, 140, 140]   # centre 105: cells 3-4
    assert view_box([101, 100, 111, 110], view, 48, grid=28) == [84, 84, 140, 140]
    assert view_box([116, 100, 126, 110], view, 48, grid=28) == [84, 84, 140, 140]   # 121: nearest boundary 112
    assert view_box([125, 100, 135, 110], view, 48, grid=28) == [112, 84, 168, 140]  # 130: nearest boundary 140
    assert view_box([0, 0, 6, 6], view, 48, grid=28) == [0, 0, 56, 56]                # clamped at the edges
    assert view_box([440, 246, 448, 252], view, 48, grid=28) == [392, 196, 448, 252]
    assert view_box([100, 100, 190, 110], view, 48, grid=28) == [84, 84, 196, 140]   # 90 px wide: 4 cells
    assert view_box([100, 100, 110, 110], view, 48) == [81, 81, 129, 129]            # grid 0: the pixel box


def test_adaptive_policy():
    cfg = TrajectoryConfig(options=OPTIONS)
    sample = next(s for s in (render_sample(3, i, native_size=NATIVE) for i in range(20)) if s.category == ATTRIBUTE)
    assert from_vsearch(sample, cfg=cfg).zooms == 1
    # big enough in the global view: answer directly; no detail to gain (tiny original): answer directly
    assert from_vsearch(sample, cfg=TrajectoryConfig(options=OPTIONS, direct_min_side=0.5)).zooms == 0
    assert from_vsearch(sample, resolution=448, cfg=cfg).zooms == 0
    two = from_vsearch(sample, cfg=TrajectoryConfig(options=OPTIONS, two_zoom_below=1e9))
    assert two.zooms == 2 and "region" in two.turns[0]
    b0, b1 = two.boxes
    assert (b0[2] - b0[0]) > (b1[2] - b1[0])   # region first, then the tag, both in the global frame


def test_llamafactory_loader(tmp_path, layout):
    from PIL import Image

    from cof_training.cache import read_cache
    from cof_training.llamafactory import convert_row, to_cache

    sample = render_sample(4, 0, native_size=NATIVE)
    sample.image.save(tmp_path / "orig.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "crop.png")
    tb = sample.target_boxes[0]
    row = {"messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"<image>Question: {sample.text}"},
        {"role": "assistant", "content": '<think>look closer</think> <tool_call>{"name": "image_zoom_in_tool", '
                                         f'"arguments": {{"bbox_2d": {json.dumps(tb)}, "label": "tag"}}}}</tool_call>'},
        {"role": "user", "content": "<image>"},
        {"role": "assistant", "content": f"<think>seen</think> <answer>{sample.label}</answer>"}],
        "images": ["orig.png", "crop.png"]}
    traj = convert_row(row, tmp_path, OPTIONS, source_frame="original")
    assert traj.text == sample.text and traj.label == sample.label and traj.zooms == 1
    box = parse_action(traj.turns[0]).box
    region = traj.views[1].region
    assert region[0] <= tb[0] and region[1] <= tb[1] and region[2] >= tb[2] and region[3] >= tb[3]
    expected = traj.views[0].from_original(tuple(tb))
    assert all(abs(a - b) <= 0.5 for a, b in zip(box, expected))
    (tmp_path / "rows.json").write_text(json.dumps([row]))
    assert to_cache(tmp_path / "rows.json", tmp_path / "cache", tmp_path, OPTIONS, source_frame="original") == 1
    loaded = read_cache(tmp_path / "cache")[0].load()
    assert loaded.turns == traj.turns
    assert np.array_equal(np.asarray(loaded.images[1]), np.asarray(traj.images[1]))
    assert encode_trajectory(layout, loaded).input_ids == encode_trajectory(layout, traj).input_ids


def test_build_trajectory_rejects_nothing_silently():
    with pytest.raises(ValueError):
        TrajectoryConfig(box_min_side=0)
    sample = render_sample(3, 1, native_size=NATIVE)
    traj = build_trajectory(sample.image, sample.text, sample.label, sample.category, sample.target_boxes,
                            sample.target_colours, sample.answer_text, TrajectoryConfig(options=OPTIONS))
    assert traj.turns[-1].endswith(f"<answer>{sample.label}</answer>")
