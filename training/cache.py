"""Pre-render vsearch trajectories to disk so that training spends the CPU on the model, not on 4K scenes.

Layout of a cache directory (append-only; several writers can share it as long as their scene ranges differ)::

    cache/images/s{scene}_r{res}_v{k}.png      every view image, exactly as the runtime renders it (lossless)
    cache/records-{start}-{stop}.jsonl         one trajectory a line: text, turns, label, category, views, images,
                                               targets (the asked tags' boxes at that resolution)

A rendered 3840x2160 scene costs ~0.6 s here; each scene is shown at `res_per_scene` resolutions and, with
`all_tag_questions`, asked about every tag (its own question plus one attribute question per other tag), so one
render yields ~5-8 trajectories. `python -m cof_training.cache --preset cpu-default --out DIR --start 0 --stop N`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cof_edge.data import render_sample, resize_to_long_side, scale_box
from cof_edge.data.vsearch import ATTRIBUTE, ATTRIBUTE_TEMPLATE, LETTERS, SYMBOLS, format_prompt
from cof_edge.geometry import View
from cof_edge.images import RESAMPLE

from .presets import Preset, get_preset
from .trajectories import Trajectory, TrajectoryConfig, build_trajectory


def trajectory_config(preset: Preset) -> TrajectoryConfig:
    return TrajectoryConfig(options=preset.budgets.ask_options(), box_min_side=preset.box_min_side,
                            box_grid=preset.box_grid, two_zoom_below=preset.two_zoom_below)


def scene_questions(sample, all_tags: bool, rng: np.random.Generator) -> list[dict]:
    """The sample's own question, plus (optionally) an attribute question for each other tag (options as vsearch)."""
    own = dict(text=sample.text, label=sample.label, category=sample.category, boxes=sample.target_boxes,
               colours=sample.target_colours, answer=sample.answer_text)
    out = [own]
    if not all_tags:
        return out
    asked = set(sample.target_colours) if sample.category == ATTRIBUTE else set()
    for tag in sample.tags:
        if tag.colour in asked:
            continue
        in_scene = [t.symbol for t in sample.tags if t is not tag]
        elsewhere = [s for s in SYMBOLS if s not in in_scene and s != tag.symbol]
        wrong = (in_scene + [str(s) for s in rng.permutation(elsewhere)])[:3]
        options = [str(o) for o in rng.permutation([tag.symbol, *wrong])]
        out.append(dict(text=format_prompt(ATTRIBUTE_TEMPLATE.format(colour=tag.colour), options),
                        label=LETTERS[options.index(tag.symbol)], category=ATTRIBUTE, boxes=[list(tag.box)],
                        colours=[tag.colour], answer=tag.symbol))
    return out


def render_scene(preset: Preset, index: int, out: Path, cfg: TrajectoryConfig) -> list[dict]:
    rng = np.random.default_rng([preset.data_seed, index, 7])
    sample = render_sample(preset.data_seed, index)
    resolutions = rng.choice(np.array(preset.resolutions), size=min(preset.res_per_scene, len(set(preset.resolutions))),
                             replace=False)
    records = []
    for res in sorted({int(r) for r in resolutions}):
        image = sample.image if res == max(sample.image.size) else resize_to_long_side(sample.image, res)
        saved_global = None
        for k, q in enumerate(scene_questions(sample, preset.all_tag_questions, rng)):
            boxes = [scale_box(b, sample.image.size, image.size) for b in q["boxes"]]
            traj = build_trajectory(image, q["text"], q["label"], q["category"], boxes, q["colours"], q["answer"], cfg)
            paths = []
            for j, (view, img) in enumerate(zip(traj.views, traj.images)):
                if j == 0 and saved_global is not None:
                    paths.append(saved_global)
                    continue
                name = f"images/s{index}_r{res}_v{k}_{j}.png"
                img.save(out / name)
                paths.append(name)
                if j == 0:
                    saved_global = name
            records.append(dict(scene=index, resolution=res, text=traj.text, turns=traj.turns, label=traj.label,
                                category=traj.category, images=paths,
                                views=[[list(v.region), list(v.size)] for v in traj.views], targets=traj.targets))
    return records


def build_cache(preset: Preset, out, start: int, stop: int, progress: bool = True) -> Path:
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    cfg = trajectory_config(preset)
    from tqdm import tqdm

    chunk = 50
    for lo in range(start, stop, chunk):
        hi = min(stop, lo + chunk)
        path = out / f"records-{lo:06d}-{hi:06d}.jsonl"
        if path.exists():
            continue
        lines = []
        for i in tqdm(range(lo, hi), desc=f"scenes {lo}-{hi}", disable=not progress, mininterval=5):
            lines += [json.dumps(r) for r in render_scene(preset, i, out, cfg)]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.rename(path)  # a shard appears whole or not at all
    return out


@dataclass
class CachedTrajectory:
    record: dict
    root: Path

    def load(self) -> Trajectory:
        views = [View(region=tuple(r), size=tuple(s)) for r, s in self.record["views"]]
        images = []
        for path, view in zip(self.record["images"], views):
            with Image.open(self.root / path) as img:  # absolute paths (other datasets) ignore the root
                img = img.convert("RGB")
            images.append(img if img.size == view.size else img.resize(view.size, RESAMPLE))
        return Trajectory(text=self.record["text"], turns=self.record["turns"], views=views, images=images,
                          label=self.record["label"], category=self.record["category"],
                          targets=self.record.get("targets", []))


def read_cache(root) -> list[CachedTrajectory]:
    root = Path(root)
    out = []
    for path in sorted(root.glob("records-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(CachedTrajectory(json.loads(line), root))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cof_training.cache", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-default")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--stop", type=int, default=None)
    args = parser.parse_args(argv)
    preset = get_preset(args.preset)
    build_cache(preset, args.out, args.start, args.stop if args.stop is not None else preset.scenes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
