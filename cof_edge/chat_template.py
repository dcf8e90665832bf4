"""The Qwen2.5-VL chat template, verbatim.

This is the exact Jinja template that ``Qwen/Qwen2.5-VL-7B-Instruct`` ships in its ``chat_template.json``
(identical to the one in its ``tokenizer_config.json``). It:

* renders ``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n`` first when the first message is not a
  system message;
* accepts ``content`` as a string or as a list of items; ``{"type": "image"}`` (or any item with an ``image`` /
  ``image_url`` key) renders ``<|vision_start|><|image_pad|><|vision_end|>``, video items render
  ``<|vision_start|><|video_pad|><|vision_end|>``, items with a ``text`` key render their text verbatim;
* ends every message with ``<|im_end|>\\n`` and, with ``add_generation_prompt``, appends ``<|im_start|>assistant\\n``;
* with ``add_vision_id=True`` prefixes ``Picture N: `` / ``Video N: ``.

Note: a list-content message's text items are concatenated with nothing in between, and a single
``<|image_pad|>`` stands for the whole image: callers expand it to ``grid_t*grid_h*grid_w // merge_size**2`` pads.

This module must import nothing (``cof_edge`` is torch/transformers-free).
"""

QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
