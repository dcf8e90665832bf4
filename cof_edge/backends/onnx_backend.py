"""ONNX Runtime backend: runs a cof-edge bundle with numpy, tokenizers and onnxruntime only (never torch).

Graphs and their contracts come from the bundle's `cof.json`. The vision precompute (rotary positions, window
layout) runs on the host (`cof_edge.vision_host`); M-RoPE positions come from the engine. Each session keeps its
KV cache and appends to it: nothing already prefilled is prefilled again. A variant with a `decoder_step` graph runs
it for one-token steps and its decoder for everything longer; both read and write the same KV buffers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from .. import vision_host
from ..bundle import OPTIONAL_ROLES, BundleError, load_bundle
from ..geometry import View
from ..images import SourceImage
from ..preprocess import preprocess
from ..providers import choose_providers, session_providers

KV_MIN_CAPACITY = 1024   # positions an in-place KV buffer starts with; it doubles when a forward would overflow it

class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, bundle_dir: str | Path, variant: str | None = None, providers: Sequence[str] = ("cpu",),
                 threads: int | None = None, verify: bool = False):
        self.directory = Path(bundle_dir)
        self.bundle = load_bundle(self.directory, verify=verify)
        self.variant = variant or self.bundle.default_variant
        graphs = self.bundle.variant(self.variant)
        self.providers = choose_providers(providers, ort.get_available_providers())
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.sessions = {role: self._open(entry, role, options) for role, entry in graphs.items()}
        self.tokenizer = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        self.vision_geometry = vision_host.VisionGeometry.from_dict(self.bundle.vision)
        self.cache_id = f"onnx:{self.bundle.bundle_id}:{graphs['vision'].sha256[:16]}"
        self.image_token_id = self.bundle.special_tokens["image_pad"]
        decoder_inputs = {i.name: i for i in self.sessions["decoder"].get_inputs()}
        self.past_names = [name for name in decoder_inputs if name.startswith("past_")]
        self.present_names = [o.name for o in self.sessions["decoder"].get_outputs() if o.name.startswith("present_")]
        if [o.name for o in self.sessions["decoder"].get_outputs()][0] != "logits" or \
                [n.replace("past_", "present_") for n in self.past_names] != self.present_names:
            raise BundleError(f"{graphs['decoder'].file}: outputs do not follow the decoder contract "
                             f"(logits, then present_* in the order of the past_* inputs)")
        self.step_decoder = self.sessions.get("decoder_step")
        if self.step_decoder is not None and (
                [i.name for i in self.step_decoder.get_inputs()] != list(decoder_inputs)
                or [o.name for o in self.step_decoder.get_outputs()] != ["logits", *self.present_names]):
            raise BundleError(f"{graphs['decoder_step'].file}: its inputs and outputs differ from the decoder's "
                              f"{graphs['decoder'].file}; re-export the bundle")
        self.kv_dtype = np.float16 if decoder_inputs[self.past_names[0]].type == "tensor(float16)" else np.float32
        text = self.bundle.text
        self.kv_shape = (text["kv_heads"], text["head_dim"])
        self.max_context = text.get("max_position_embeddings")
        self.kv_in_place = graphs["decoder"].kv_cache == "in_place"

    def _open(self, entry, role: str, options) -> ort.InferenceSession:
        """An ORT session for one graph, checked against the signature cof.json recorded for it."""
        kind = OPTIONAL_ROLES.get(role, role)
        path = self.directory / entry.file
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=session_providers(
                self.providers, self.bundle.providers, kind, self.directory))
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise BundleError(f"{entry.file} could not be loaded by onnxruntime ({str(exc).splitlines()[0][:200]}): "
                              f"the file is truncated or corrupt; re-copy or re-export the bundle") from None
        actual = {i.name: len(i.shape) for i in session.get_inputs()}
        recorded = {name: len(dims) for name, (_, dims) in entry.inputs.items()}
        if actual != recorded:
            raise BundleError(f"{entry.file}: its inputs {actual} do not match cof.json {recorded} (name: rank): "
                              f"the graph was replaced or cof.json edited; re-export the bundle")
        return session

    def pixel_inputs(self, source: SourceImage, view: View) -> tuple[np.ndarray, tuple[int, int, int]]:
        pixels, grid = preprocess(source.pixels, (view.size[1], view.size[0]), box=view.region)
        return pixels, tuple(grid)

    def encode_view(self, source: SourceImage, view: View) -> np.ndarray:
        pixels, grid = self.pixel_inputs(source, view)
        feeds = vision_host.feed(pixels, [grid], self.vision_geometry)
        return self.sessions["vision"].run(None, feeds)[0]

    def embed(self, token_ids: np.ndarray) -> np.ndarray:
        return self.sessions["embed"].run(None, {"input_ids": token_ids[None].astype(np.int64)})[0]

    def new_session(self) -> "OnnxSession":
        return OnnxSession(self)


def kv_device(providers: Sequence[str]) -> str:
    """Where the KV cache lives between steps: on the GPU when a GPU provider runs the decoder."""
    return "cuda" if providers and providers[0] in ("cuda", "tensorrt") else "cpu"


class OnnxSession:
    """One conversation. Present K/V come back as ORT values bound as the next step's past, never copied to host
    (on CUDA they stay on the device); only the last-token logits are fetched. With an in-place decoder
    (`kv_cache: in_place`) each layer's past is one buffer of `capacity` positions, bound as its present too: a
    step writes only its new positions instead of copying the whole cache into a fresh present."""

    def __init__(self, backend: OnnxBackend):
        self.backend = backend
        self.device = kv_device(backend.providers)
        self.cached_tokens = 0
        self.capacity = 0
        self.past = self._kv_buffers(0)

    def _kv_buffers(self, positions: int) -> dict[str, ort.OrtValue]:
        """Zeroed past buffers of `positions` positions holding the cached prefix of the current ones."""
        heads, head_dim = self.backend.kv_shape
        buffers = {}
        for name in self.backend.past_names:
            buffer = np.zeros((1, heads, positions, head_dim), self.backend.kv_dtype)
            if self.cached_tokens:
                buffer[:, :, :self.cached_tokens] = self.past[name].numpy()[:, :, :self.cached_tokens]
            buffers[name] = ort.OrtValue.ortvalue_from_numpy(buffer, self.device)
        return buffers

    def _reserve(self, total: int) -> None:
        if total > self.capacity:
            self.capacity = max(KV_MIN_CAPACITY, 1 << (total - 1).bit_length())
            self.past = self._kv_buffers(self.capacity)

    def forward(self, token_ids: np.ndarray, positions: np.ndarray, image_embeds: Sequence[np.ndarray]) -> np.ndarray:
        backend = self.backend
        embeds = backend.embed(token_ids)
        if len(image_embeds):
            image_rows = np.flatnonzero(token_ids == backend.image_token_id)
            vision = np.concatenate(list(image_embeds)).astype(embeds.dtype, copy=False)
            if len(image_rows) != len(vision):
                raise ValueError(f"{len(image_rows)} image tokens but {len(vision)} image embeddings")
            embeds[0, image_rows] = vision
        total = self.cached_tokens + len(token_ids)
        if backend.kv_in_place:
            self._reserve(total)
        decoder = backend.step_decoder if len(token_ids) == 1 and backend.step_decoder else backend.sessions["decoder"]
        binding = decoder.io_binding()
        binding.bind_cpu_input("inputs_embeds", embeds)
        binding.bind_cpu_input("attention_mask", np.ones((1, total), np.int64))
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(positions[:, None, :], dtype=np.int64))
        for name, value in self.past.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for past_name, name in zip(backend.past_names, backend.present_names):
            if backend.kv_in_place:
                binding.bind_ortvalue_output(name, self.past[past_name])
            else:
                binding.bind_output(name, self.device)
        decoder.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        if not backend.kv_in_place:
            self.past = dict(zip(backend.past_names, outputs[1:]))
        self.cached_tokens = total
        return outputs[0].numpy()[0].astype(np.float32, copy=False)
