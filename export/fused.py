"""Fused decoders for ONNX Runtime targets: onnxruntime-genai's model builder, conformed to our decoder contract.

The standard-op decoder (`graphs.export_decoder`) stays, for TensorRT. Beside it, for `--target cpu`, this module
builds the text decoder with onnxruntime-genai's model builder (GroupQueryAttention, MRotaryEmbedding,
SkipSimplifiedLayerNormalization, MatMulNBits: com.microsoft ops) and rewrites its graph so that it honours
exactly the contract of the standard decoder, so `cof_edge`'s ONNX Runtime backend runs it unchanged. The int8
fused decoder is the builder's fp32 graph quantized with `quantize_dynamic`, as the plain int8 decoder is (the
builder's own int8, 8-bit MatMulNBits, prefills 2.5x slower; `build_fused_decoder`), except its vocabulary
projection: it multiplies one row per step, which 8-bit MatMulNBits streams faster (`vocab_projection_8bit`).
Beside the int8 fused decoder, a one-token *step decoder*: the same fp32 graph with every MatMul 8-bit MatMulNBits
(`matmuls_8bit`), which the runtime runs for decode steps while prefill keeps the quantize_dynamic graph; both write
the same in-place KV buffers. It costs a second copy of the decoder weights, so it is kept only when its decode is
measured faster (qwen300m, 2 threads, 530 cached positions, back-to-back pairs: 8.5-9.4 vs 11.1-11.7 ms/token
in four of five, equal in the fifth; README).

Builder options and the rewrite to our contract:

- builder options: `exclude_embeds=true` (inputs_embeds in; the bundle's embed graph stays), `prune_lm_head=true`
  (the vocabulary projection runs on the last position only: logits [B, 1, V]);
- inputs renamed `past_key_values.{i}.key|value` → `past_key.{i}` / `past_value.{i}`, outputs `present.{i}.key|value`
  → `present_key.{i}` / `present_value.{i}`, both reordered as ours (embeds, mask, positions, then key/value per
  layer); a Gather of the last position makes the logits [B, V]; dims renamed batch / seq / past / total and
  head_dim made concrete. KV stays float32 at fp32, int8 and int4 (the builder quantizes weights only).
- One difference in meaning, not in signature: GroupQueryAttention reads the attention mask as sequence lengths
  (sum of ones), so it supports all-ones and right-padded masks only, not left padding. The runtime feeds all-ones.
- GroupQueryAttention writes new K/V in place when the present is bound to the past's buffer (then sized to a
  capacity, not to the cached length), so fused decoders are recorded `kv_cache: in_place` and the runtime binds
  them that way: a decode step no longer copies the whole cache (at 600 cached positions, qwen300m int8: 12.7 →
  11.3 ms/token; at 1500 the copy cost more than the weights).

`add_fused_variants` (called by the pipeline after the standard variants' parity gate) builds one fused decoder per
requested precision that the builder makes on CPU (fp32, int8, int4), measures decode ms/token against the plain
decoder of the same precision in the same process, keeps it only when it is faster AND passes the same parity gate
as the plain one (a fused variant that is slower or misses its gate is dropped and recorded, never fails the
export; with `force` a gate miss is kept and marked, as for the plain ones), records everything in
`exporter["fused"]`, and, on `--target cpu` with no explicit default, makes `{default}-fused` the default variant
when it was kept and passed (same precision as the default, measured faster, gated).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from .quantize import QuantSettings, matmuls_8bit, quantize_graph, vocab_projection_8bit

log = logging.getLogger(__name__)

FUSED_PRECISIONS = ("fp32", "int8", "int4")   # the fused CPU decoders made here
# The builder's precision behind each fused decoder: int8 quantizes the builder's fp32 graph with our own int8
# scheme (quantize_dynamic: MatMulInteger, which onnxruntime fuses into DynamicQuantizeMatMul/MatMulIntegerToFloat).
BUILDER_PRECISION = {"fp32": "fp32", "int8": "fp32", "int4": "int4"}
SUFFIX = "-fused"
STEP_SUFFIX = "-step"
ROUTE = "onnxruntime-genai model builder (int8: its fp32 graph + quantize_dynamic)"
BUILD_WORKERS = 2


@dataclass(frozen=True)
class DecodeTiming:
    """Decode and prefill speed of one decoder graph, medians over repeats."""

    decode_ms_per_token: float
    prefill_ms: float
    prefill_tokens: int
    decode_tokens: int


def genai_available() -> bool:
    return importlib.util.find_spec("onnxruntime_genai") is not None


def genai_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("onnxruntime-genai")
    except Exception:  # noqa: BLE001 - not installed
        return None


def build_raw(model_dir: Path, out_dir: Path, precision: str, block_size: int = 32,
              accuracy_level: int | None = 4, cache_dir: Path | None = None) -> Path:
    """Runs the genai model builder (in a subprocess: it imports its own torch/transformers state); returns model.onnx."""
    if precision not in FUSED_PRECISIONS:
        raise ValueError(f"the builder makes fused CPU decoders in {FUSED_PRECISIONS}, not {precision!r}")
    if not genai_available():
        raise RuntimeError("onnxruntime-genai is not installed: pip install 'cof-edge[fused]'")
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_dir or out_dir / "cache"
    extra = ["exclude_embeds=true", "prune_lm_head=true"]
    if precision != "fp32":
        extra += [f"block_size={block_size}", "is_symmetric=true"]
        if accuracy_level is not None:
            extra.append(f"accuracy_level={accuracy_level}")
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(model_dir), "-o", str(out_dir),
               "-p", precision, "-e", "cpu", "-c", str(cache_dir), "--extra_options", *extra]
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    model = out_dir / "model.onnx"
    if done.returncode or not model.is_file():
        tail = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"onnxruntime-genai's builder failed for {precision} (exit {done.returncode}):\n{tail}")
    return model


def conform(raw: Path, out: Path, layers: int, head_dim: int) -> None:
    """Rewrites the builder's decoder graph to our decoder contract (module docstring) and saves it at `out`."""
    model = onnx.load(str(raw))
    graph = model.graph
    renames = {}
    for layer in range(layers):
        for kind in ("key", "value"):
            renames[f"past_key_values.{layer}.{kind}"] = f"past_{kind}.{layer}"
            renames[f"present.{layer}.{kind}"] = f"present_{kind}.{layer}"
    expected_in = {"inputs_embeds", "attention_mask", "position_ids", *(n for n in renames if n.startswith("past"))}
    expected_out = {"logits", *(n for n in renames if n.startswith("present"))}
    found_in, found_out = {v.name for v in graph.input}, {v.name for v in graph.output}
    if found_in != expected_in or found_out != expected_out:
        raise ValueError(f"unexpected builder graph signature: inputs {sorted(found_in)}, outputs {sorted(found_out)}")

    # Logits: the last position of the builder's [B, 1, V] (prune_lm_head; [B, S, V] without it) → our [B, V].
    renames["logits"] = "logits_last_position"
    _rename_everywhere(graph, renames)
    graph.initializer.append(helper.make_tensor("logits_last_index", TensorProto.INT64, [], [-1]))
    graph.node.append(helper.make_node("Gather", ["logits_last_position", "logits_last_index"], ["logits"],
                                       name="/cof/logits_last_token", axis=1))
    three_d = next(v for v in graph.output if v.name == "logits_last_position")
    vocab = three_d.type.tensor_type.shape.dim[-1].dim_value
    logits = helper.make_tensor_value_info("logits", three_d.type.tensor_type.elem_type, ["batch", vocab])

    inputs = {v.name: v for v in graph.input}
    outputs = {v.name: v for v in graph.output}
    outputs["logits"] = logits
    kv_in = [f"past_{kind}.{layer}" for layer in range(layers) for kind in ("key", "value")]
    kv_out = [f"present_{kind}.{layer}" for layer in range(layers) for kind in ("key", "value")]
    ordered_in = [inputs[n] for n in ("inputs_embeds", "attention_mask", "position_ids", *kv_in)]
    ordered_out = [outputs[n] for n in ("logits", *kv_out)]
    del graph.input[:]
    graph.input.extend(ordered_in)
    del graph.output[:]
    graph.output.extend(ordered_out)
    dims = {"batch_size": "batch", "sequence_length": "seq", "past_sequence_length": "past",
            "total_sequence_length": "total"}
    for value in list(graph.input) + list(graph.output):
        shape = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(shape):
            if dim.dim_param in dims:
                dim.dim_param = dims[dim.dim_param]
            elif dim.dim_param == "kv_cache_dim" or (value.name.startswith(("past_", "present_")) and axis == 3):
                dim.Clear()
                dim.dim_value = head_dim
    for value in graph.input:
        if value.name.startswith("past_") and value.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise ValueError(f"{value.name} is not float32: the CPU runtime keeps a float32 KV cache")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in (out, out.with_name(out.name + ".data")):
        stale.unlink(missing_ok=True)
    onnx.save(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
              location=out.name + ".data", size_threshold=1024)


def _rename_everywhere(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name in renames:
            value.name = renames[value.name]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for i, name in enumerate(node.output):
            if name in renames:
                node.output[i] = renames[name]
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _rename_everywhere(attribute.g, renames)


def build_fused_decoder(model_dir: Path, out: Path, precision: str, layers: int, head_dim: int,
                        quant: QuantSettings = QuantSettings(), step_out: Path | None = None) -> float:
    """Builds and conforms one fused decoder at `out` (int8 with `step_out`: its step decoder there too); returns
    the seconds it took.

    int8 is the builder's fp32 graph quantized by `quantize_dynamic` (`BUILDER_PRECISION`), not the builder's own
    int8 (8-bit MatMulNBits): on the ~300M config, 1 thread, 600-token context, the builder's int8 prefilled in
    952 ms and decoded at 17.8 ms/token, its fp32 graph + quantize_dynamic in 384 ms and 15.3 ms/token (the plain
    int8 graph: 512 ms, 24.8 ms/token). Only its vocabulary projection, which multiplies one row per step, is 8-bit
    MatMulNBits (`vocab_projection_8bit`). int4 is the builder's own (blocks of `quant.int4_block_size`)."""
    started = time.perf_counter()
    built = BUILDER_PRECISION[precision]
    with tempfile.TemporaryDirectory(prefix="cof-fused-", dir=out.parent) as work:
        raw = build_raw(Path(model_dir), Path(work) / built, built, quant.int4_block_size, quant.int4_accuracy_level)
        if built == precision:
            conform(raw, out, layers, head_dim)
        else:
            conformed = Path(work) / f"conformed-{built}.onnx"
            conform(raw, conformed, layers, head_dim)
            if precision == "int8":
                if step_out is not None:
                    matmuls_8bit(conformed, step_out, quant)
                vocab_8bit = Path(work) / "vocab-8bit.onnx"
                vocab_projection_8bit(conformed, vocab_8bit, quant)
                conformed = vocab_8bit
            quantize_graph(precision, conformed, out, "decoder", quant)
    return time.perf_counter() - started


# ---- timing ---------------------------------------------------------------------------------------------------

def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def time_decoder(sess, hidden: int, prefill_tokens: int = 64, decode_tokens: int = 16, repeats: int = 3,
                 seed: int = 0, warmup: bool = True) -> DecodeTiming:
    """Prefill `prefill_tokens` random embeddings, then decode `decode_tokens` one at a time feeding the KV back.

    One warm-up pass (unless `warmup` is false), then `repeats` timed passes; medians. Works for any graph with our
    decoder contract (KV float32).
    """
    rng = np.random.default_rng(seed)
    names = [i.name for i in sess.get_inputs()]
    past_names = [n for n in names if n.startswith("past_")]
    shape = sess.get_inputs()[names.index(past_names[0])].shape
    heads, head_dim = shape[1], shape[3]
    prompt = rng.standard_normal((1, prefill_tokens, hidden), dtype=np.float32)
    steps = rng.standard_normal((decode_tokens, 1, 1, hidden), dtype=np.float32)

    def one_pass():
        past = {n: np.zeros((1, heads, 0, head_dim), np.float32) for n in past_names}
        positions = np.arange(prefill_tokens, dtype=np.int64)
        started = time.perf_counter()
        out = sess.run(None, {"inputs_embeds": prompt, "attention_mask": np.ones((1, prefill_tokens), np.int64),
                              "position_ids": np.broadcast_to(positions, (3, 1, prefill_tokens)).copy(), **past})
        prefill = time.perf_counter() - started
        past = dict(zip(past_names, out[1:]))
        started = time.perf_counter()
        for step in range(decode_tokens):
            total = prefill_tokens + step + 1
            out = sess.run(None, {"inputs_embeds": steps[step], "attention_mask": np.ones((1, total), np.int64),
                                  "position_ids": np.full((3, 1, 1), total - 1, np.int64), **past})
            past = dict(zip(past_names, out[1:]))
        return prefill, (time.perf_counter() - started) / decode_tokens

    if warmup:
        one_pass()
    runs = [one_pass() for _ in range(repeats)]
    return DecodeTiming(decode_ms_per_token=float(np.median([r[1] for r in runs]) * 1e3),
                        prefill_ms=float(np.median([r[0] for r in runs]) * 1e3),
                        prefill_tokens=prefill_tokens, decode_tokens=decode_tokens)


def compare_speed(plain: Path, fused: Path, hidden: int, rounds: int = 5, **timing) -> tuple[DecodeTiming, DecodeTiming]:
    """Both graphs warmed up, then timed one pass each in alternation (a noisy neighbour hits both alike), `rounds`
    times; for each graph, the round with its median decode ms/token."""
    sessions = (session(plain), session(fused))
    for sess in sessions:
        time_decoder(sess, hidden, repeats=1, warmup=False, **timing)  # the warm-up pass
    results = ([], [])
    for _ in range(rounds):
        for which in (0, 1):
            results[which].append(time_decoder(sessions[which], hidden, repeats=1, warmup=False, **timing))
    pick = lambda rs: sorted(rs, key=lambda r: r.decode_ms_per_token)[len(rs) // 2]  # noqa: E731
    return pick(results[0]), pick(results[1])


# ---- the pipeline step ----------------------------------------------------------------------------------------

def add_fused_variants(model_dir: Path, staging: Path, bundle, reference, config,
                       say=lambda stage: None) -> dict[str, list[str]]:
    """Adds the kept `{precision}-fused` variants to `bundle` (files in `staging`, manifest rewritten).

    Called by the pipeline after the standard variants' parity gate, for `config.target == "cpu"`; the record goes
    to `bundle.exporter["fused"]`. Returns {variant: parity failures} of the fused variants kept only because
    `config.force` (without force, a fused variant that misses its gate is dropped, not an export failure).
    """
    from cof_edge.backends.onnx_backend import OnnxBackend
    from cof_edge.bundle import MANIFEST

    from . import parity
    from .pipeline import _entry, _gate_precision

    record = {"route": ROUTE, "onnxruntime_genai": genai_version(), "variants": {}}
    missed: dict[str, list[str]] = {}
    bundle.exporter["fused"] = record
    if not genai_available():
        record["skipped"] = "onnxruntime-genai is not installed (pip install 'cof-edge[fused]')"
        log.warning("fused decoders skipped: %s", record["skipped"])
        return {}
    text = bundle.text
    precisions = [p for p in config.precisions if p in FUSED_PRECISIONS]
    say(f"fused decoders {', '.join(precisions)}")

    def build(precision):  # builder subprocesses: two at a time (mostly single-threaded Python work)
        step = staging / _step_file(precision) if precision == "int8" and config.step_decoder else None
        return build_fused_decoder(model_dir, staging / f"decoder.{precision}{SUFFIX}.onnx", precision,
                                   text["layers"], text["head_dim"], config.quant, step_out=step)

    with ThreadPoolExecutor(max_workers=BUILD_WORKERS) as pool:
        builds = {p: pool.submit(build, p) for p in precisions}
        for future in builds.values():
            future.exception()
    for precision in precisions:
        variant, graph_id = f"{precision}{SUFFIX}", f"decoder.{precision}{SUFFIX}"
        file, step_file = f"{graph_id}.onnx", _step_file(precision)
        entry_record = record["variants"][variant] = {"kept": False}
        try:
            entry_record["build_seconds"] = round(builds[precision].result(), 2)
        except Exception as exc:  # noqa: BLE001 - an optional speed-up: record why, keep the export going
            entry_record["reason"] = f"build failed: {exc}"[:2000]
            log.warning("fused %s decoder not built: %s", precision, exc)
            _remove_graph_files(staging, file, step_file)
            continue
        say(f"time fused decoder {precision}")
        plain_graph = bundle.graphs[bundle.variants[precision]["decoder"]]
        plain, fused = compare_speed(staging / plain_graph.file, staging / file, text["hidden"])
        entry_record.update(decode_ms_per_token=round(fused.decode_ms_per_token, 4),
                            plain_decode_ms_per_token=round(plain.decode_ms_per_token, 4),
                            prefill_ms=round(fused.prefill_ms, 3), plain_prefill_ms=round(plain.prefill_ms, 3),
                            decode_speedup=round(plain.decode_ms_per_token / fused.decode_ms_per_token, 3),
                            timing={"prefill_tokens": fused.prefill_tokens, "decode_tokens": fused.decode_tokens})
        if fused.decode_ms_per_token >= plain.decode_ms_per_token:
            entry_record["reason"] = "not faster than the plain decoder of the same precision"
            _remove_graph_files(staging, file, step_file)
            continue
        bundle.graphs[graph_id] = _entry(staging, file, "decoder", precision, kv_cache="in_place")
        bundle.variants[variant] = {**bundle.variants[precision], "decoder": graph_id}
        if (staging / step_file).is_file():
            say(f"time step decoder {variant}")
            _attach_step_decoder(staging, bundle, variant, step_file, text["hidden"], entry_record)
        (staging / MANIFEST).write_text(bundle.to_json())
        say(f"parity {variant}")
        measured = parity.compare(reference, OnnxBackend(staging, variant=variant), steps=config.parity_steps)
        gate = _gate_precision(bundle, variant)
        measured.update(gate=gate, thresholds=parity.thresholds_record(gate),
                        failures=parity.failures(measured, gate))
        if measured["failures"] and not config.force:
            entry_record["reason"] = f"parity gate: {measured['failures']}"
            dropped = bundle.variants.pop(variant)
            for role in ("decoder", "decoder_step"):
                bundle.graphs.pop(dropped.get(role, ""), None)
            _remove_graph_files(staging, file, step_file)
            continue
        bundle.parity[variant] = measured
        entry_record["kept"] = True
        if measured["failures"]:
            entry_record["forced"] = True
            missed[variant] = measured["failures"]
    if config.default_variant is None and config.target == "cpu":
        preferred = f"{bundle.default_variant}{SUFFIX}"
        if preferred in bundle.variants and preferred not in missed:
            bundle.default_variant = preferred
            record["default"] = (f"{preferred}: the cpu target's default precision, fused, measured faster than "
                                 f"the plain graph and passing the same parity gate")
    bundle.check()
    (staging / MANIFEST).write_text(bundle.to_json())
    return missed


def _step_file(precision: str) -> str:
    return f"decoder.{precision}{SUFFIX}{STEP_SUFFIX}.onnx"


def _attach_step_decoder(staging: Path, bundle, variant: str, step_file: str, hidden: int, record: dict) -> None:
    """Times the step decoder against `variant`'s decoder, both one token per step; makes it the variant's
    `decoder_step` when faster, else removes it. Recorded under `record["step_decoder"]`."""
    from .pipeline import _entry

    decoder = bundle.graphs[bundle.variants[variant]["decoder"]]
    full, step = compare_speed(staging / decoder.file, staging / step_file, hidden)
    outcome = record["step_decoder"] = {
        "decode_ms_per_token": round(step.decode_ms_per_token, 4),
        "decoder_decode_ms_per_token": round(full.decode_ms_per_token, 4),
        "decode_speedup": round(full.decode_ms_per_token / step.decode_ms_per_token, 3), "kept": False}
    if step.decode_ms_per_token >= full.decode_ms_per_token:
        outcome["reason"] = "not faster than the decoder itself at one token per step"
        _remove_graph_files(staging, step_file)
        return
    graph_id = step_file.removesuffix(".onnx")
    bundle.graphs[graph_id] = _entry(staging, step_file, "decoder", decoder.precision, kv_cache=decoder.kv_cache)
    bundle.variants[variant]["decoder_step"] = graph_id
    outcome.update(kept=True, extra_bytes=bundle.graphs[graph_id].bytes)


def _remove_graph_files(root: Path, *files: str) -> None:
    for file in files:
        for path in (root / file, root / f"{file}.data"):
            path.unlink(missing_ok=True)
