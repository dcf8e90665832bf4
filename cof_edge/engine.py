"""FocusEngine: the Chain-of-Focus loop. Global view → generate → parse → crop the original → new turn → …"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from .actions import ActionKind, extract_answer, parse_action
from .backends.base import Backend, load_backend
from .crop_cache import CropCache
from .generate import decode_greedy, prefill
from .geometry import PATCH, CropError, View, global_view, plan_crop
from .images import SourceImage, load_image
from .options import AskOptions, trained_options
from .protocol import TokenLayout, crop_turn_prompt, opening_prompt
from .result import FocusResult, StepTrace
from .state import FocusState

StepCallback = Callable[[StepTrace], None]


class FocusEngine:
    def __init__(self, backend: Backend, options: AskOptions | None = None, crop_cache: CropCache | None = None):
        """`crop_cache`: vision embeddings shared across questions (None: a 256 MiB one; `CropCache(0)` disables)."""
        self.backend = backend
        self.options = options or AskOptions()
        self.layout = TokenLayout(backend.tokenizer)
        self.crop_cache = crop_cache if crop_cache is not None else CropCache()

    @classmethod
    def load(cls, bundle_dir: str | Path, providers=("cpu",), threads: int | None = None, variant: str | None = None,
             options: AskOptions | None = None, verify: bool = False) -> "FocusEngine":
        """A cof-edge bundle on ONNX Runtime; its budgets (from cof.json) are the default options."""
        from .backends.onnx_backend import OnnxBackend

        backend = OnnxBackend(bundle_dir, variant=variant, providers=providers, threads=threads, verify=verify)
        return cls(backend, options or AskOptions().with_overrides(**backend.bundle.budgets))

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, backend: str = "transformers", options: AskOptions | None = None,
                        **backend_kwargs) -> "FocusEngine":
        """A Hugging Face checkpoint directory, run by the named backend (`transformers`). A checkpoint trained by
        `cof_training` carries the pixel budgets it was trained with (RECIPE.json `ask_options`): the defaults."""
        return cls(load_backend(backend, model_dir, **backend_kwargs), options or trained_options(model_dir))

    def ask(self, image, question: str, on_step: StepCallback | None = None, **overrides) -> FocusResult:
        """The whole question: turns until an answer or a bound. `overrides` replace `AskOptions` fields."""
        state = self.start(image, question, **overrides)
        while not state.done:
            trace = self.step(state)
            if on_step is not None:
                on_step(trace)
        return state.result

    def start(self, image, question: str, **overrides) -> FocusState:
        options = self.options.with_overrides(**overrides)
        source = SourceImage(load_image(image, options.max_image_pixels))
        view = global_view(source.size, options.global_min_pixels, options.global_max_pixels)
        return FocusState(question=question, source=source, options=options, session=self.backend.new_session(),
                          result=FocusResult(question=question, image_size=source.size), next_view=view)

    def step(self, state: FocusState) -> StepTrace:
        """One turn: show `state.next_view`, generate a reply, act on it."""
        if state.done:
            raise RuntimeError("this question is finished; start() a new one")
        options, view = state.options, state.next_view
        first_turn = not state.views
        t_start = time.perf_counter()
        text = opening_prompt(state.question, options.system_prompt) if first_turn else crop_turn_prompt()
        new_ids = [] if state.turn_closed else [self.layout.special.im_end]
        new_ids += self.layout.encode(text, [view.visual_tokens])
        room = self._context_limit(state) - len(state.token_ids) - len(new_ids)
        if room < 1:
            return self._overflow(state, view, len(new_ids), t_start)

        t0 = time.perf_counter()
        embeds, cache_hit = self._encode(state, view)
        t_vision = time.perf_counter()
        ids = state.unfed + new_ids
        state.token_ids += new_ids
        grid = (1, view.size[1] // PATCH, view.size[0] // PATCH)
        logits = prefill(state.session, state.cursor, ids, [grid], [embeds], self.layout.special.image_pad)
        state.views.append(view)
        t_prefill = time.perf_counter()

        state.turn_token_limit = min(options.max_new_tokens, room)
        tokens = self.respond(state, logits)
        t_decode = time.perf_counter()
        stop_ids = self.layout.special.stop_ids
        state.token_ids += tokens
        state.unfed = tokens[-1:]
        state.turn_closed = bool(tokens) and tokens[-1] in stop_ids
        reply = self.layout.decode([t for t in tokens if t not in stop_ids], skip_special_tokens=False)

        trace = StepTrace(index=len(state.result.steps), action="none", text=reply, view_region=view.region,
                          view_size=view.size, visual_tokens=view.visual_tokens, prompt_tokens=len(ids),
                          new_tokens=len(tokens), cache_hit=cache_hit)
        self._act(state, reply, trace, hit_token_bound=not state.turn_closed)
        t_end = time.perf_counter()
        trace.ms = {"vision": _ms(t0, t_vision), "prefill": _ms(t_vision, t_prefill),
                    "decode": _ms(t_prefill, t_decode), "total": _ms(t_start, t_end)}
        state.result.steps.append(trace)
        return trace

    def _encode(self, state: FocusState, view: View):
        key = (state.source.digest, view.region, view.size, getattr(self.backend, "cache_id", None) or id(self.backend))
        embeds = self.crop_cache.get(key)
        if embeds is not None:
            return embeds, True
        embeds = self.backend.encode_view(state.source, view)
        self.crop_cache.put(key, embeds)
        return embeds, False

    def respond(self, state: FocusState, logits) -> list[int]:
        """The reply's tokens given the prefill logits; greedy, at most `state.turn_token_limit` of them.

        Its last token stays unfed until the next turn.
        """
        return decode_greedy(state.session, state.cursor, logits, state.turn_token_limit, self.layout.special.stop_ids)

    def _context_limit(self, state: FocusState) -> int:
        limits = [state.options.max_context_tokens, getattr(self.backend, "max_context", None)]
        return min((limit for limit in limits if limit), default=1 << 62)

    def _overflow(self, state: FocusState, view: View, needed: int, t0: float) -> StepTrace:
        """The next turn does not fit the context: end with a recorded reason instead of failing in the model."""
        limit = self._context_limit(state)
        trace = StepTrace(index=len(state.result.steps), action="none", text="", view_region=view.region,
                          view_size=view.size, visual_tokens=view.visual_tokens, prompt_tokens=0, new_tokens=0,
                          error=f"the next turn needs {needed} tokens after {len(state.token_ids)}, over the context "
                                f"limit of {limit}: lower the pixel budgets or max_zooms, or raise max_context_tokens")
        trace.ms = {"total": _ms(t0, time.perf_counter())}
        state.result.steps.append(trace)
        self._finish(state, None, "context_overflow")
        return trace

    def _act(self, state: FocusState, reply: str, trace: StepTrace, hit_token_bound: bool) -> None:
        action = parse_action(reply, state.options.box_frame)
        trace.action = action.kind.value
        result = state.result
        if action.kind is ActionKind.ANSWER:
            return self._finish(state, action.answer, "answer")
        if action.kind is ActionKind.MALFORMED:
            trace.error = action.error
            return self._finish(state, None, "malformed_action")
        if action.kind is ActionKind.NONE:
            return self._finish(state, extract_answer(reply), "max_new_tokens" if hit_token_bound else "no_action")
        trace.box, trace.box_frame, trace.repairs = action.box, action.frame.value, action.notes
        if result.zooms >= state.options.max_zooms:
            trace.error = f"zoom budget of {state.options.max_zooms} spent"
            return self._finish(state, None, "max_zooms")
        source = 0 if action.source_image is None else action.source_image
        if not 0 <= source < len(state.views):
            trace.error = f"box refers to image {source}, but only {len(state.views)} were shown"
            return self._finish(state, None, "bad_box")
        try:
            plan = plan_crop(action.box, state.views[source], state.source.size, state.options.crop_settings,
                             frame=action.frame.value)
        except CropError as exc:
            trace.error = str(exc)
            return self._finish(state, None, "bad_box")
        trace.repairs = action.notes + plan.repairs
        if state.options.stop_on_repeated_box and any(v.region == plan.view.region for v in state.views[1:]):
            trace.error = f"crop {plan.view.region} was already shown"
            return self._finish(state, None, "repeated_box")
        trace.crop_region = plan.view.region
        state.next_view = plan.view

    @staticmethod
    def _finish(state: FocusState, answer: str | None, reason: str) -> None:
        state.result.answer, state.result.stop_reason, state.done = answer, reason, True


def _ms(start: float, end: float) -> float:
    return round((end - start) * 1000.0, 3)
