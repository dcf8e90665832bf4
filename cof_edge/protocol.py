"""The CoF conversation protocol, defined once: prompts, chat layout, token ids of the chat markup.

Training writes trajectories with these functions and the runtime feeds the model with them, so a trajectory
trained on is byte-identical to what the runtime feeds (DESIGN §1). Texts are the CoF release's (DESIGN §6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

SYSTEM_PROMPT = """You are a helpful assistant.

# Tools
You may call one or more functions to assist with the user query.
You are provided with function signatures within <tools></tools> XML tags:
<tools>
{"type": "function", "function": {"name":"image_zoom_in_tool","description":"Zoom in on a specific region of an image by cropping it based on a bounding box (bbox_2d) and an optional object label.","parameters":{"properties":{"bbox_2d":{"type":"array","items":{"type":"number"},"minItems":4,"maxItems":4,"description":"The bounding box of the region to zoom in, as [x1, y1, x2, y2], where (x1, y1) is the top-left corner and (x2, y2) is the bottom-right corner."},"label":{"type":"string","description":"The name or label of the object in the specified bounding box (optional)."}},"required":["bbox_2d"], "type":"object"},"args_format": "Format the arguments as a JSON object."}}
</tools>

For the function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>"""

FORMAT_INSTRUCTION = (
    "\nThink in the mind first, and then decide whether to call tools one or more times OR provide final answer. "
    "Format strictly as: <think>...</think> <tool_call>...</tool_call> <tool_call>...</tool_call> "
    "(if any tools needed) OR <answer>...</answer> (if no tools needed)."
)

ZOOM_TOOL_NAME = "image_zoom_in_tool"

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
END_OF_TEXT = "<|endoftext|>"
IMAGE_SLOT = VISION_START + IMAGE_PAD + VISION_END


def first_user_text(question: str) -> str:
    return f"Question: {question}{FORMAT_INSTRUCTION}"


def crop_user_text() -> str:
    return FORMAT_INSTRUCTION


def opening_prompt(question: str, system_prompt: str = SYSTEM_PROMPT) -> str:
    """System turn, the first user turn (global view + question) and the assistant header.

    One `<|image_pad|>` stands for the whole image; `TokenLayout.encode` expands it to the image's tokens.
    """
    return (
        f"{IM_START}system\n{system_prompt}{IM_END}\n"
        f"{IM_START}user\n{IMAGE_SLOT}{first_user_text(question)}{IM_END}\n"
        f"{IM_START}assistant\n"
    )


def crop_turn_prompt() -> str:
    """What follows an assistant turn that asked for a zoom (its `<|im_end|>` included): the crop as a user turn."""
    return f"\n{IM_START}user\n{IMAGE_SLOT}{crop_user_text()}{IM_END}\n{IM_START}assistant\n"


def render_conversation(question: str, assistant_turns: Sequence[str], system_prompt: str = SYSTEM_PROMPT,
                        add_generation_prompt: bool = False) -> str:
    """A whole CoF conversation as text: assistant turn i>0 follows the crop image asked for by turn i-1.

    Equal to the Qwen2.5-VL chat template applied to the same messages (tested), one image per user turn.
    """
    text = opening_prompt(question, system_prompt)
    for i, reply in enumerate(assistant_turns):
        text += reply + IM_END
        if i < len(assistant_turns) - 1 or add_generation_prompt:
            text += crop_turn_prompt()
        else:
            text += "\n"
    return text


def chat_messages(question: str, assistant_turns: Sequence[str], images: Sequence[object],
                  system_prompt: str = SYSTEM_PROMPT) -> list[dict]:
    """The same conversation as chat messages (the layout of HF chat templates and TRL datasets)."""
    if len(images) < len(assistant_turns):
        raise ValueError(f"{len(assistant_turns)} assistant turns need {len(assistant_turns)} images, got {len(images)}")
    messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}]
    for i, image in enumerate(images):
        text = first_user_text(question) if i == 0 else crop_user_text()
        messages.append({"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]})
        if i < len(assistant_turns):
            messages.append({"role": "assistant", "content": [{"type": "text", "text": assistant_turns[i]}]})
    return messages


@dataclass(frozen=True)
class SpecialIds:
    im_start: int
    im_end: int
    end_of_text: int
    vision_start: int
    vision_end: int
    image_pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "SpecialIds":
        """From a `tokenizers.Tokenizer`; every id must exist (a tokenizer without them cannot run CoF)."""
        names = {"im_start": IM_START, "im_end": IM_END, "end_of_text": END_OF_TEXT,
                 "vision_start": VISION_START, "vision_end": VISION_END, "image_pad": IMAGE_PAD}
        ids = {field: tokenizer.token_to_id(token) for field, token in names.items()}
        missing = [names[f] for f, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks the Qwen2.5-VL special tokens {missing}: it cannot run the CoF protocol")
        return cls(**ids)

    @property
    def stop_ids(self) -> frozenset[int]:
        return frozenset({self.im_end, self.end_of_text})


class TokenLayout:
    """Turns protocol text into token ids, expanding each `<|image_pad|>` to that image's token count."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.special = SpecialIds.from_tokenizer(tokenizer)

    def encode(self, text: str, image_tokens: Sequence[int] = ()) -> list[int]:
        pieces = text.split(IMAGE_PAD)
        if len(pieces) - 1 != len(image_tokens):
            raise ValueError(f"text has {len(pieces) - 1} image slots but {len(image_tokens)} images were given")
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            if piece:
                ids.extend(self.tokenizer.encode(piece, add_special_tokens=False).ids)
            if i < len(image_tokens):
                ids.extend([self.special.image_pad] * image_tokens[i])
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
