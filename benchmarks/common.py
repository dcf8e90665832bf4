"""Helpers shared by the benchmark scripts (latency, accuracy, limits, report). Lean: cof_edge, numpy, stdlib.

Nothing here imports torch; `machine()` reads package versions from their metadata, not by importing them.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_BUNDLE = REPO / "cof_edge" / "default_bundle"
DEFAULT_MODEL = REPO / "training" / "default_model"
CACHE = REPO / ".cache" / "bench"
# Held-out vsearch questions: training renders from seed 1000, training/evaluate.py scores seed 777; we use 777 too
# so that the bundle's accuracy and the training engineer's are measured on the same questions.
EVAL_SEED = 777
# Latency questions: another stream again (speed does not depend on which questions, but keep them apart).
LATENCY_SEED = 4242


def say(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def progress(iterable: Iterable, desc: str, total: int | None = None, disable: bool = False):
    """tqdm on stderr (a plain iterator when tqdm is not installed)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with the export extra
        return iterable
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True, disable=disable)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(wanted=("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")) -> list[str]:
    """The matmul-relevant ISA extensions (AMX int8 explains an int8 GEMM far above the fp32 one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict:
    """What the numbers were measured on."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "isa": cpu_flags(),
        "memory_gb": memory_gb(),
        "load_average_at_start": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in
                     ("cof-edge", "numpy", "onnxruntime", "onnxruntime-genai", "torch", "transformers", "pillow")},
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def spread(values: Sequence[float], digits: int = 3) -> dict | None:
    """Median and p10/p90 (numpy's linear interpolation) of a sample; None for no sample."""
    values = [float(v) for v in values]
    if not values:
        return None
    p10, p90 = np.percentile(values, [10, 90])
    return {"median": round(statistics.median(values), digits), "p10": round(float(p10), digits),
            "p90": round(float(p90), digits), "n": len(values)}


def median(values: Sequence[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def rss_mb() -> dict:
    """Current and peak resident memory of this process (MiB), from /proc/self/status (VmRSS, VmHWM)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        import resource

        out["VmHWM"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return {"rss_mb": out.get("VmRSS"), "peak_rss_mb": out.get("VmHWM")}


def last_json_line(text: str) -> dict:
    """The last line of a script's stdout, parsed (every benchmark prints its summary LAST)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise ValueError("no output")
    return json.loads(lines[-1])


def load_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def fmt(value, digits: int = 1, none: str = "–") -> str:
    if value is None:
        return none
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
