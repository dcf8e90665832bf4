"""The reference backend: a transformers `Qwen2_5_VLForConditionalGeneration` from a local HF directory.

Imported only when chosen (it imports torch). The KV cache lives in a `DynamicCache` per session; every turn
appends to it. Positions come from the engine (host M-RoPE), so this backend and ONNX Runtime see the same ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

try:
    import torch
    from transformers import DynamicCache, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the transformers backend needs torch and transformers: pip install 'cof-edge[export]'") from exc
from tokenizers import Tokenizer

from ..geometry import View
from ..images import SourceImage


class TransformersBackend:
    name = "transformers"

    def __init__(self, model_dir: str | Path, dtype: str = "float32", device: str = "cpu", threads: int | None = None):
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
        if not (model_dir / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{model_dir} has no tokenizer.json (a fast tokenizer file is required)")
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            model_dir, dtype=getattr(torch, dtype), local_files_only=True).to(self.device).eval()
        self.max_context = self.model.config.text_config.max_position_embeddings
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.image_processor = _image_processor(model_dir)
        self.cache_id = f"transformers:{model_dir.resolve()}:{dtype}"

    def pixel_inputs(self, image: Image.Image) -> tuple["torch.Tensor", "torch.Tensor"]:
        """pixel_values [patches, 1176] and image_grid_thw [1, 3], exactly as the HF processor makes them.

        The engine already sized the view to multiples of 28 within its budget, so nothing is resized here.
        """
        if image.width % 28 or image.height % 28:
            raise ValueError(f"view {image.width}x{image.height} is not a multiple of 28 on both sides")
        out = self.image_processor(images=[image], do_resize=False, return_tensors="pt")
        return out["pixel_values"].to(self.device), out["image_grid_thw"].to(self.device)

    @torch.inference_mode()
    def encode_view(self, source: SourceImage, view: View) -> "torch.Tensor":
        pixel_values, grid = self.pixel_inputs(source.view(view))
        features = self.model.model.get_image_features(pixel_values, grid, return_dict=True)
        return features.pooler_output[0]

    def new_session(self) -> "TransformersSession":
        return TransformersSession(self)


class TransformersSession:
    def __init__(self, backend: TransformersBackend):
        self.backend = backend
        self.cache = DynamicCache(config=backend.model.config)
        self.cached_tokens = 0

    @torch.inference_mode()
    def forward(self, token_ids: np.ndarray, positions: np.ndarray, image_embeds: Sequence["torch.Tensor"]) -> np.ndarray:
        model, device = self.backend.model, self.backend.device
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=device)[None]
        embeds = model.get_input_embeddings()(ids)
        if len(image_embeds):
            image_mask = (ids == model.config.image_token_id)[..., None].expand_as(embeds)
            vision = torch.cat(list(image_embeds)).to(embeds.dtype)
            if int(image_mask[..., 0].sum()) != vision.shape[0]:
                raise ValueError(f"{int(image_mask[..., 0].sum())} image tokens but {vision.shape[0]} image embeddings")
            embeds = embeds.masked_scatter(image_mask, vision)
        position_ids = torch.as_tensor(positions, dtype=torch.long, device=device)[:, None, :]
        out = model(inputs_embeds=embeds, position_ids=position_ids, cache=self.cache, use_cache=True, logits_to_keep=1)
        self.cached_tokens += len(token_ids)
        return out.logits[0, -1].float().cpu().numpy()


def _image_processor(model_dir: Path) -> Qwen2VLImageProcessorPil:
    if (model_dir / "preprocessor_config.json").is_file():
        return Qwen2VLImageProcessorPil.from_pretrained(model_dir)
    return Qwen2VLImageProcessorPil()
