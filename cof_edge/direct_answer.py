"""Answer from the views already seen, with the zoom taken away: the `no_zoom` baseline of the accuracy tables."""

from __future__ import annotations

import re

import numpy as np

from .engine import FocusEngine
from .generate import decode_one_token


class DirectAnswerEngine(FocusEngine):
    """Greedy decoding with the zoom taken away: answers from the views already seen (the `no_zoom` method).

    After `</think>` a CoF turn goes on either to a tool call or to ` <answer>`; here the answer path is forced in
    the tokenization the model was trained on (the tokens of `"</think> <answer"` after those of `"</think>"`:
    `" <"`, `"answer"` for the small tokenizer), then the option letter the model ranks highest (its first token as
    trained, `">B"`), then `</answer>` and the end of the turn. `<tool_call>` is banned before `</think>`. The
    letter is the model's own best guess from the global view.
    """

    def respond(self, state, logits) -> list[int]:
        tokenizer = self.backend.tokenizer
        tool_id = tokenizer.token_to_id("<tool_call>")
        head = tokenizer.encode("</think>", add_special_tokens=False).ids
        full = tokenizer.encode("</think> <answer", add_special_tokens=False).ids
        forced = full[len(head):] if full[:len(head)] == head else tokenizer.encode(" <answer", add_special_tokens=False).ids
        stop_ids = self.layout.special.stop_ids
        limit = getattr(state, "turn_token_limit", state.options.max_new_tokens)
        tokens: list[int] = []
        while True:
            if self.layout.decode(tokens, skip_special_tokens=False).endswith("</think>") and len(tokens) < limit:
                for f in forced:
                    tokens.append(f)
                    logits = decode_one_token(state.session, state.cursor, f)
                # then the option letter the model ranks highest (its first token as trained: ">B")
                letters = re.findall(r"^\(([A-Z])\)", state.question, flags=re.M) or list("ABCD")
                endings = {L: tokenizer.encode(f"</think> <answer>{L}</answer>", add_special_tokens=False).ids[len(full):]
                           for L in letters}
                best = max(letters, key=lambda L: logits[endings[L][0]])
                for t in endings[best]:  # the letter, then `</answer>` as trained; the turn ends there
                    tokens.append(t)
                    decode_one_token(state.session, state.cursor, t)
                tokens.append(self.layout.special.im_end)
                return tokens
            else:
                z = np.array(logits, dtype=np.float32, copy=True)
                if tool_id is not None:
                    z[tool_id] = -np.inf
                tokens.append(int(np.argmax(z)))
            if tokens[-1] in stop_ids or len(tokens) >= limit:
                return tokens  # the last token stays unfed, as in decode_greedy
            logits = decode_one_token(state.session, state.cursor, tokens[-1])
