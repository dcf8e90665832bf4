"""cof-edge: Chain-of-Focus adaptive zoom reasoning, lean runtime (numpy, pillow, tokenizers, onnxruntime)."""

__version__ = "0.1.0"
