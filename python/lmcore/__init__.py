"""lmcore: train GPT-style language models from scratch on a CPU.

The engine (arena, autograd tape, BLAS kernels, AdamW) is Rust, in the private module
``lmcore._core``; this package re-exports it and adds data loading, tokenizers, checkpoints and
the train/generate scripts (``python -m lmcore.train``).
"""

from lmcore import blas as _blas

_blas.load_library()  # before the engine's module, which needs it

from lmcore._core import (  # noqa: E402
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
from lmcore.blas import BlasInfo, blas_info  # noqa: E402

__all__ = [
    "BlasInfo",
    "IGNORE_ID",
    "Graph",
    "LmcoreError",
    "Model",
    "Tensor",
    "__version__",
    "blas_info",
    "matmul",
    "matmul_reference",
    "num_threads",
    "set_num_threads",
]
