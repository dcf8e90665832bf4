"""Benchmark: decode speed against the memory-bandwidth bound, the two measured side by side.

    python benchmarks/decode_probe.py --bundle DIR [--variant V] [--threads N] [--context 530] [--tokens 48]
                                      [--rounds 7] [--mb 256]

A latency run's decode ms and limits.py's bandwidth are measured minutes apart, and this VM's memory bandwidth moves
between sessions and within one (numpy's best kernel: 33 to 59 GB/s), so their ratio carries the drift. Here each
round measures the bandwidth (`limits.measure_bandwidth`, its best kernel) and right after it `--tokens` greedy decode
steps through the runtime (`cof_edge.generate.decode_one_token`: embedding, the step decoder where the variant has one,
logits, argmax) with `--context` tokens cached. A round's fraction = (bytes one step reads / that round's bandwidth)
/ that round's median ms per token; the result is the median over rounds. Bytes per step: the weights of the graph
that runs decode steps + the KV cache at the context. The LAST line printed is a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import progress  # noqa: E402
from limits import kv_bytes, measure_bandwidth  # noqa: E402

from cof_edge.backends.onnx_backend import OnnxBackend  # noqa: E402
from cof_edge.generate import decode_one_token, prefill  # noqa: E402
from cof_edge.mrope import MRopeCursor  # noqa: E402


def decode_ms_per_token(backend: OnnxBackend, context: int, tokens: int, seed: int) -> float:
    """Median ms of one greedy step after a text prefill of `context` random token ids."""
    session, cursor = backend.new_session(), MRopeCursor()
    image_token = backend.image_token_id

    def greedy(logits: np.ndarray) -> int:  # text only: an image token would need image embeddings
        logits[..., image_token] = -np.inf
        return int(np.argmax(logits))

    prompt = np.random.default_rng(seed).integers(0, backend.tokenizer.get_vocab_size(), context)
    prompt[prompt == image_token] = 0
    token = greedy(prefill(session, cursor, prompt.tolist(), (), (), image_token))
    times = []
    for _ in range(tokens):
        t0 = time.perf_counter()
        token = greedy(decode_one_token(session, cursor, token))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def probe(bundle_dir: Path, variant: str | None = None, threads: int | None = None, context: int = 530,
          tokens: int = 48, rounds: int = 7, mb: int = 256) -> dict:
    backend = OnnxBackend(bundle_dir, variant=variant, threads=threads)
    graphs = backend.bundle.variant(backend.variant)
    step_graph = graphs.get("decoder_step", graphs["decoder"])
    bytes_per_token = step_graph.bytes + kv_bytes(backend.bundle.text, context + tokens // 2)
    decode_ms_per_token(backend, context, 8, seed=0)  # warm-up: ORT's first runs on new shapes are slow
    entries = []
    for r in progress(range(rounds), desc=f"decode probe {backend.variant}"):
        gbs = measure_bandwidth(mb, 3)["bound_gbs"]
        ms = decode_ms_per_token(backend, context, tokens, seed=r + 1)
        bound_ms = bytes_per_token / (gbs * 1e9) * 1e3
        entries.append({"bandwidth_gbs": gbs, "ms_per_token": round(ms, 5), "bound_ms": round(bound_ms, 5),
                        "fraction": round(bound_ms / ms, 4), "streamed_gbs": round(bytes_per_token / ms / 1e6, 2)})

    def median(key):
        return round(statistics.median(e[key] for e in entries), 4)

    return {"bundle": str(bundle_dir), "variant": backend.variant, "decode_graph": step_graph.file,
            "threads": threads, "context": context, "tokens": tokens, "bytes_per_token": bytes_per_token,
            "rounds": entries, "fraction": median("fraction"), "bandwidth_gbs": median("bandwidth_gbs"),
            "ms_per_token": median("ms_per_token")}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--variant", default=None, help="default: the bundle's default variant")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--context", type=int, default=530, help="tokens in the KV cache while decoding")
    parser.add_argument("--tokens", type=int, default=48, help="decode steps per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mb", type=int, default=256, help="array size of the bandwidth kernels (MiB)")
    args = parser.parse_args(argv)
    result = probe(args.bundle, args.variant, args.threads, args.context, args.tokens, args.rounds, args.mb)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
