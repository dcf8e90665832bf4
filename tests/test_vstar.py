"""V* layout: our writer and reader round-trip, and the reader loads V*'s own files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cof_edge.data.vsearch import ATTRIBUTE, PROMPT_SUFFIX, SPATIAL, generate, scale_box
from cof_edge.data.vstar import QUESTIONS_FILE, parse_options, read_vstar, run_vsearch_cli, write_vstar

NATIVE = (1280, 720)  # small scenes: the layout code does not care about size
VSTAR_LINE = (
    '{"image": "direct_attributes/sa_4690.jpg", "text": "What is the color of the woman\'s shirt?\\n(A) blue\\n'
    '(B) white\\n(C) red\\n(D) black\\nAnswer with the option\'s letter from the given choices directly.", '
    '"category": "direct_attributes", "question_id": 0, "label": "A"}'
)


@pytest.fixture(scope="module")
def samples():
    return list(generate(6, seed=21, native_size=NATIVE))


def test_round_trip_keeps_every_field_and_the_pixels(samples, tmp_path):
    out = write_vstar(samples, tmp_path / "bench")
    items = read_vstar(out)
    assert len(items) == len(samples)
    assert {item.category for item in items} == {ATTRIBUTE, SPATIAL}
    for question_id, (item, sample) in enumerate(zip(items, samples)):
        assert item.question_id == question_id
        assert (item.text, item.label, item.category) == (sample.text, sample.label, sample.category)
        assert item.image.startswith(f"{sample.category}/") and item.image.endswith(".png")
        assert item.image_path == out / item.image
        assert item.question == sample.question
        assert item.options == sample.options and item.answer_text == sample.answer_text
        assert item.target_boxes == sample.target_boxes
        assert item.extras["target_colours"] == sample.target_colours
        assert (item.extras["seed"], item.extras["index"]) == (21, sample.index)
        assert item.extras["image_size"] == item.extras["original_size"] == list(NATIVE)
        assert [t["box"] for t in item.extras["tags"]] == [t.box for t in sample.tags]
        assert np.array_equal(np.asarray(item.load_image()), np.asarray(sample.image))  # lossless


def test_resized_write_scales_boxes_and_records_the_original(samples, tmp_path):
    items = read_vstar(write_vstar(samples[:2], tmp_path, resolution=448))
    for item, sample in zip(items, samples):
        image = item.load_image()
        assert image.size == (448, 252)
        assert item.extras["image_size"] == [448, 252] and item.extras["original_size"] == list(NATIVE)
        assert item.extras["resolution"] == 448
        assert item.extras["original_target_boxes"] == sample.target_boxes
        expected = [scale_box(box, NATIVE, (448, 252)) for box in sample.target_boxes]
        assert item.target_boxes == [pytest.approx(box, abs=0.006) for box in expected]
        assert item.target_boxes != sample.target_boxes


def test_questions_file_has_v_stars_fields_first_and_ours_beside_them(samples, tmp_path):
    write_vstar(samples[:1], tmp_path)
    record = json.loads((tmp_path / QUESTIONS_FILE).read_text().splitlines()[0])
    assert list(record)[:5] == ["image", "text", "category", "question_id", "label"]
    assert {"options", "answer_text", "target_boxes", "target_colours", "seed", "index", "image_size"} <= set(record)
    assert (tmp_path / record["image"]).is_file()


def test_writing_into_an_existing_directory_deletes_nothing(samples, tmp_path):
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    write_vstar(samples[:2], tmp_path)
    write_vstar(samples[2:3], tmp_path)  # the second write replaces the question file, leaves the images
    assert keep.read_text() == "mine"
    assert len(read_vstar(tmp_path)) == 1
    assert len(list(tmp_path.rglob("*.png"))) == 3
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_reader_loads_v_stars_own_layout(tmp_path):
    (tmp_path / "direct_attributes").mkdir()
    (tmp_path / "relative_position").mkdir()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(tmp_path / "direct_attributes" / "sa_4690.jpg", quality=90)
    Image.new("RGB", (24, 32), (10, 10, 200)).save(tmp_path / "relative_position" / "sa_1.jpg", quality=90)
    no_label = {
        "question_id": 1,
        "category": "relative_position",
        "text": "Is the cup on the left or right side of the laptop?\n(A) left\n(B) right\n" + PROMPT_SUFFIX,
        "image": "relative_position/sa_1.jpg",
    }
    (tmp_path / QUESTIONS_FILE).write_text(VSTAR_LINE + "\n\n" + json.dumps(no_label) + "\n")

    first, second = read_vstar(tmp_path)
    assert first.question_id == 0 and first.label == "A" and first.category == "direct_attributes"
    assert first.image_path == tmp_path / "direct_attributes" / "sa_4690.jpg"
    assert first.question == "What is the color of the woman's shirt?"
    assert first.options == ["blue", "white", "red", "black"] and first.answer_text == "blue"
    assert first.extras == {} and first.target_boxes is None
    assert first.load_image().size == (32, 24)
    assert second.label is None and second.answer_text is None
    assert second.options == ["left", "right"] and second.category == "relative_position"
    assert second.load_image().size == (24, 32)
    assert [item.question_id for item in read_vstar(tmp_path / QUESTIONS_FILE)] == [0, 1]  # the file itself works


def test_reader_reports_bad_lines(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_vstar(tmp_path)
    (tmp_path / QUESTIONS_FILE).write_text(VSTAR_LINE + "\n{not json\n")
    with pytest.raises(ValueError, match=":2:"):
        read_vstar(tmp_path)
    (tmp_path / QUESTIONS_FILE).write_text('{"text": "no image"}\n')
    with pytest.raises(ValueError, match="image"):
        read_vstar(tmp_path)


def test_parse_options_splits_question_and_options():
    text = json.loads(VSTAR_LINE)["text"]
    assert parse_options(text) == ("What is the color of the woman's shirt?", ["blue", "white", "red", "black"])
    assert parse_options("Two lines\nof question?\n(A) x\n(B) y") == ("Two lines\nof question?", ["x", "y"])
    assert parse_options("No options here?\n" + PROMPT_SUFFIX) == ("No options here?", [])


def test_cli_entry_writes_the_layout_and_reports_progress(tmp_path, capsys):
    out = run_vsearch_cli(2, str(tmp_path / "cli"), seed=4, resolution=672)
    items = read_vstar(out)
    assert len(items) == 2 and all(item.load_image().size == (672, 378) for item in items)
    assert all(item.extras["original_size"] == [3840, 2160] for item in items)
    assert "2/2" in capsys.readouterr().err
