"""lmcore: train GPT-style language models from scratch on a CPU.

The engine (arena, autograd tape, BLAS kernels, AdamW) is Rust, in the private module
``lmcore._core``; this package re-exports it and adds data loading, tokenizers, checkpoints and
the train/generate scripts (``python -m lmcore.train``).
"""

from lmcore._core import (
    IGNORE_ID,
    Graph,
    LmcoreError,
    Model,
    Tensor,
    __version__,
    matmul,
    matmul_reference,
    num_threads,
    set_num_threads,
)

__all__ = [
    "IGNORE_ID",
    "Graph",
    "LmcoreError",
    "Model",
    "Tensor",
    "__version__",
    "matmul",
    "matmul_reference",
    "num_threads",
    "set_num_threads",
]
