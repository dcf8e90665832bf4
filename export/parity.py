"""The parity gate: a bundle variant against the PyTorch model it came from, on probe image prompts.

Both sides run through the runtime's own backends (`cof_edge`'s ONNX Runtime backend and its transformers
backend), so what is measured is what the runtime will do. Recorded per probe and overall: max abs diff of the
image embeddings and of last-token logits, top-1 agreement over N teacher-forced steps, and whether N greedy
tokens are identical.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from cof_edge.generate import decode_greedy, decode_one_token, prefill
from cof_edge.geometry import PATCH, global_view
from cof_edge.images import SourceImage
from cof_edge.mrope import MRopeCursor
from cof_edge.protocol import TokenLayout, opening_prompt

PROBE_QUESTION = ("What symbol is on the red tag?\n(A) circle\n(B) star\n(C) heart\n(D) arrow\n"
                  "Answer with the option's letter from the given choices directly.")


@dataclass(frozen=True)
class Thresholds:
    image_embeds_max_abs: float | None
    logits_max_abs: float | None
    top1_agreement_min: float
    greedy_identical: bool


THRESHOLDS = {
    "fp32": Thresholds(1e-3, 1e-3, 1.0, True),
    "fp16": Thresholds(None, None, 0.95, False),
    "int8": Thresholds(None, None, 0.99, False),
    "int4": Thresholds(None, None, 0.90, False),
}


@dataclass(frozen=True)
class Probe:
    """A synthetic photo-like image of `size` shown within `max_pixels` (one probe has partial 112-px windows)."""

    size: tuple[int, int]
    max_pixels: int
    seed: int


PROBES = (Probe((517, 301), 200704, 1), Probe((333, 517), 160000, 2))


def probe_image(probe: Probe) -> np.ndarray:
    rng = np.random.default_rng(probe.seed)
    width, height = probe.size
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 / width, yy * 255 / height, (xx ^ yy) & 255], axis=-1) + rng.normal(0, 20, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def compare(reference, candidate, steps: int = 16, probes=PROBES, min_pixels: int = 56 * 56) -> dict:
    """Runs each probe prompt on both backends; returns the measurements (see module docstring)."""
    layout = TokenLayout(reference.tokenizer)
    records = [_compare_probe(reference, candidate, layout, probe, steps, min_pixels) for probe in probes]
    return {"probes": records,
            "image_embeds_max_abs": max(r["image_embeds_max_abs"] for r in records),
            "logits_max_abs": max(r["logits_max_abs"] for r in records),
            "top1_agreement": float(np.mean([r["top1_agreement"] for r in records])),
            "greedy_identical": all(r["greedy_identical"] for r in records)}


def _compare_probe(reference, candidate, layout: TokenLayout, probe: Probe, steps: int, min_pixels: int) -> dict:
    source = SourceImage(Image.fromarray(probe_image(probe)))
    view = global_view(source.size, min_pixels, probe.max_pixels)
    ref_embeds = reference.encode_view(source, view)
    cand_embeds = candidate.encode_view(source, view)
    ids = layout.encode(opening_prompt(PROBE_QUESTION), [view.visual_tokens])
    grid = (1, view.size[1] // PATCH, view.size[0] // PATCH)

    def start(backend, embeds):
        session, cursor = backend.new_session(), MRopeCursor()
        return session, cursor, prefill(session, cursor, ids, [grid], [embeds], layout.special.image_pad)

    ref_session, ref_cursor, ref_logits = start(reference, ref_embeds)
    cand_session, cand_cursor, cand_logits = start(candidate, cand_embeds)
    logits_diff, agreed, reference_tokens = 0.0, 0, []
    for _ in range(steps):  # the candidate is teacher-forced on the reference's greedy tokens
        logits_diff = max(logits_diff, float(np.abs(ref_logits - cand_logits).max()))
        token = int(np.argmax(ref_logits))
        agreed += int(token == int(np.argmax(cand_logits)))
        reference_tokens.append(token)
        ref_logits = decode_one_token(ref_session, ref_cursor, token)
        cand_logits = decode_one_token(cand_session, cand_cursor, token)
    greedy_session, greedy_cursor, greedy_logits = start(candidate, cand_embeds)
    candidate_tokens = decode_greedy(greedy_session, greedy_cursor, greedy_logits, steps, frozenset())
    return {"image_size": list(probe.size), "view_size": list(view.size),
            "image_embeds_max_abs": float(np.abs(_numpy(ref_embeds) - _numpy(cand_embeds)).max()),
            "logits_max_abs": logits_diff, "top1_agreement": agreed / steps,
            "greedy_identical": candidate_tokens == reference_tokens, "steps": steps}


def failures(measured: dict, precision: str) -> list[str]:
    """What misses the thresholds of `precision` (empty: the variant passes)."""
    limits = THRESHOLDS[precision]
    missed = []
    for key in ("image_embeds_max_abs", "logits_max_abs"):
        bound = getattr(limits, key)
        if bound is not None and measured[key] > bound:
            missed.append(f"{key} {measured[key]:.3g} > {bound:g}")
    if measured["top1_agreement"] < limits.top1_agreement_min:
        missed.append(f"top1_agreement {measured['top1_agreement']:.3f} < {limits.top1_agreement_min}")
    if limits.greedy_identical and not measured["greedy_identical"]:
        missed.append("greedy tokens differ")
    return missed


def thresholds_record(precision: str) -> dict:
    return asdict(THRESHOLDS[precision])


def _numpy(value) -> np.ndarray:
    return value.detach().cpu().float().numpy() if hasattr(value, "detach") else np.asarray(value, np.float32)
