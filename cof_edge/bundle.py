"""The bundle manifest, `cof.json`: the single source of truth the runtime reads (never guessed from file names).

`cof_export` writes it, `cof_edge` loads it. A bundle directory holds `cof.json`, `tokenizer.json` and ONNX graphs
(with external data files) for one or more *variants*: a variant names one embed, one vision and one decoder graph,
so the vision precision is chosen separately from the decoder's, and optionally a `decoder_step` graph: a second
decoder with the same contract and KV layout that the runtime runs for one-token steps (weights laid out for
streaming one row, where the prefill graph's are laid out for many).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST = "cof.json"
GRAPH_KINDS = ("embed", "vision", "decoder")
OPTIONAL_ROLES = {"decoder_step": "decoder"}   # variant role -> the kind of graph it names
PRECISIONS = ("fp32", "fp16", "int8", "int4")
KV_CACHE_MODES = ("append", "in_place")


class BundleError(ValueError):
    """A bundle that cannot be loaded; the message names the file and what to do."""


@dataclass
class GraphEntry:
    file: str                      # relative to the bundle directory
    kind: str                      # embed | vision | decoder
    precision: str                 # fp32 | fp16 | int8 | int4
    sha256: str
    bytes: int
    data_files: dict[str, str] = field(default_factory=dict)   # external data file -> sha256
    flavour: str = "standard"      # standard (ONNX domain ops only, TensorRT-parsable) | contrib (ORT contrib ops)
    inputs: dict[str, list] = field(default_factory=dict)      # name -> [dtype, [dims]] (symbolic dims as str)
    outputs: dict[str, list] = field(default_factory=dict)
    # decoders only. append: present = past + new positions (any attention); in_place: the graph writes the new
    # positions into the past buffer, sized to a capacity and bound as the present too (GroupQueryAttention)
    kv_cache: str = "append"


@dataclass
class Bundle:
    model_name: str
    special_tokens: dict[str, int]
    chat_template: str
    budgets: dict[str, int | str]  # AskOptions fields the bundle's model was made for (budgets, system prompt)
    vision: dict                   # geometry for cof_edge.vision_host
    text: dict                     # hidden, layers, kv_heads, head_dim, vocab_size, mrope_section
    graphs: dict[str, GraphEntry]
    variants: dict[str, dict[str, str]]   # variant -> {kind: graph id}
    default_variant: str
    parity: dict[str, dict] = field(default_factory=dict)      # variant -> measured diffs and agreement
    forced: bool = False           # written with --force although a parity threshold was missed
    providers: dict = field(default_factory=dict)              # ONNX Runtime CUDA / TensorRT provider options
    exporter: dict = field(default_factory=dict)               # versions and settings that produced it
    model_family: str = "qwen2_5_vl"
    format_version: int = FORMAT_VERSION

    @property
    def bundle_id(self) -> str:
        """Identifies the graphs' contents (for cache keys): a digest of every graph hash."""
        digest = hashlib.sha256()
        for name in sorted(self.graphs):
            digest.update(f"{name}={self.graphs[name].sha256};".encode())
        return digest.hexdigest()[:16]

    def variant(self, name: str | None = None) -> dict[str, GraphEntry]:
        """{role: graph} of a variant: embed, vision, decoder, and decoder_step where it has one."""
        name = name or self.default_variant
        if name not in self.variants:
            raise BundleError(f"bundle has no variant {name!r}; it has {sorted(self.variants)}")
        return {kind: self.graphs[graph_id] for kind, graph_id in self.variants[name].items()}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "Bundle":
        data = dict(data)
        graph_fields = {f.name for f in dataclasses.fields(GraphEntry)}
        for graph_id, entry in data.get("graphs", {}).items():
            if set(entry) - graph_fields:
                raise BundleError(f"{MANIFEST}: graph {graph_id!r} has unknown fields {sorted(set(entry) - graph_fields)}"
                                  f": written by a newer cof-edge? upgrade cof-edge")
        data["graphs"] = {k: GraphEntry(**v) for k, v in data.get("graphs", {}).items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BundleError(f"{MANIFEST} has unknown fields {unknown}: written by a newer cof-edge? upgrade cof-edge")
        return cls(**data)

    def check(self) -> None:
        for name, variant in self.variants.items():
            if not set(GRAPH_KINDS) <= set(variant) or set(variant) - set(GRAPH_KINDS) - set(OPTIONAL_ROLES):
                raise BundleError(f"variant {name!r} must name one graph of each kind {GRAPH_KINDS} (and optionally "
                                  f"{sorted(OPTIONAL_ROLES)}), got {variant}")
            for role, graph_id in variant.items():
                kind = OPTIONAL_ROLES.get(role, role)
                if graph_id not in self.graphs or self.graphs[graph_id].kind != kind:
                    raise BundleError(f"variant {name!r}: {role} graph {graph_id!r} is not a {kind} graph of "
                                      f"this bundle")
            step, decoder = self.graphs.get(variant.get("decoder_step")), self.graphs[variant["decoder"]]
            if step and step.kv_cache != decoder.kv_cache:
                raise BundleError(f"variant {name!r}: its decoder_step graph {step.file} keeps the KV cache "
                                  f"{step.kv_cache!r}, its decoder {decoder.kv_cache!r}: both must hand the same "
                                  f"buffers on; re-export the bundle")
        if self.default_variant not in self.variants:
            raise BundleError(f"default variant {self.default_variant!r} is not one of {sorted(self.variants)}")
        for graph in self.graphs.values():
            if graph.precision not in PRECISIONS:
                raise BundleError(f"graph {graph.file}: unknown precision {graph.precision!r}")
            if graph.kv_cache not in KV_CACHE_MODES:
                raise BundleError(f"graph {graph.file}: unknown kv_cache {graph.kv_cache!r} (one of {KV_CACHE_MODES})")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(directory: str | Path, verify: bool = False) -> Bundle:
    """Reads and checks `cof.json`; with `verify`, every graph and data file's sha256 too."""
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise BundleError(f"{directory} is not a cof-edge bundle: {MANIFEST} is missing (make one with cof-export)")
    try:
        data = json.loads(manifest.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest} is not valid JSON ({exc}): re-export the bundle") from None
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{manifest} has format version {version}, this cof-edge reads {FORMAT_VERSION}: "
                          f"re-export the bundle with this version's cof-export, or install the matching cof-edge")
    bundle = Bundle.from_dict(data)
    bundle.check()
    root = directory.resolve()
    for graph in bundle.graphs.values():
        for relative in [graph.file, *graph.data_files]:
            path = (directory / relative).resolve()
            if root not in path.parents:
                raise BundleError(f"{manifest}: {relative!r} points outside the bundle directory")
            if not path.is_file():
                raise BundleError(f"bundle file {relative} is missing from {directory}: re-export or re-copy the bundle")
        if verify:
            expected = {graph.file: graph.sha256, **graph.data_files}
            for relative, sha in expected.items():
                if file_sha256(directory / relative) != sha:
                    raise BundleError(f"{relative} in {directory} does not match its sha256 in {MANIFEST}: "
                                      f"the file is corrupt or was replaced; re-copy or re-export the bundle")
    if not (directory / "tokenizer.json").is_file():
        raise BundleError(f"tokenizer.json is missing from {directory}: re-export the bundle")
    return bundle
