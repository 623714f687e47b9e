"""Which BLAS the engine runs, and loading it.

The engine is linked against OpenBLAS from PyPI's ``scipy-openblas32`` wheel (a current OpenBLAS,
with a ``scipy_`` prefix on every symbol). ``load_library`` loads that wheel's library before the
engine's module is imported, so the engine's dependency on it is already met: no
``LD_LIBRARY_PATH``, wherever the wheel or an editable build lives.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import sys
from dataclasses import dataclass

# OpenBLAS's x86-64 kernel families by the widest SIMD they use (its DYNAMIC_ARCH names).
KERNEL_SIMD = {
    **dict.fromkeys(["skylakex", "cooperlake", "sapphirerapids"], "avx512"),
    **dict.fromkeys(["haswell", "zen", "excavator"], "avx2"),
    **dict.fromkeys(["sandybridge", "bulldozer", "piledriver", "steamroller"], "avx"),
    **dict.fromkeys(["prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "opteron",
                     "opteron_sse3", "barcelona", "bobcat", "katmai", "coppermine", "northwood"], "sse"),
}
SIMD_ORDER = ["sse", "avx", "avx2", "avx512"]
SIMD_NAMES = {"sse": "SSE", "avx": "AVX", "avx2": "AVX2", "avx512": "AVX-512"}


def load_library() -> None:
    """Load scipy-openblas32's shared library (globally, so the engine's symbols resolve to it).
    The wheel's folder is found without importing its package, whose start-up costs 0.1 s."""
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("lmcore needs OpenBLAS from scipy-openblas32: pip install 'scipy-openblas32>=0.3.30'")
    lib_dir = os.path.join(list(spec.submodule_search_locations)[0], "lib")
    names = sorted(n for n in os.listdir(lib_dir) if n.startswith("libscipy_openblas") and (".so" in n or n.endswith(".dylib")))
    if not names:
        raise ImportError(f"lmcore: scipy-openblas32 has no library in {lib_dir}; reinstall it: pip install --force-reinstall scipy-openblas32")
    ctypes.CDLL(os.path.join(lib_dir, names[0]), mode=ctypes.RTLD_GLOBAL)


@dataclass(frozen=True)
class BlasInfo:
    """The BLAS as it runs in this process."""

    name: str  # "OpenBLAS"
    version: str  # "0.3.34"
    package: str  # where it came from: "scipy-openblas32 0.3.34.481.3"
    kernel: str  # the kernel family OpenBLAS picked (or was told by OPENBLAS_CORETYPE): "SkylakeX"
    kernel_simd: str | None  # the widest SIMD that family uses ("avx512", ...); None if unknown
    cpu_simd: str  # the widest the CPU has, as the engine's own loops detect it ("avx512", "avx2", "baseline")
    threads: int  # the engine's threads (BLAS runs one thread inside each call)
    cpu: str = "unknown CPU"  # cpu_name()

    def line(self) -> str:
        simd = SIMD_NAMES.get(self.kernel_simd or "", "")
        return (f"blas: {self.name} {self.version} ({self.package}), {self.kernel} kernels"
                + (f" ({simd})" if simd else "")
                + f", {self.cpu} with {SIMD_NAMES.get(self.cpu_simd, self.cpu_simd)}, {self.threads} engine "
                + ("thread" if self.threads == 1 else "threads") + ", 1 BLAS thread per call")

    def warning(self, forced: str | None = None) -> str | None:
        """What it costs when the kernels are older than the CPU's SIMD, and how to fix it;
        ``forced`` is OPENBLAS_CORETYPE's value, if set."""
        if self.kernel_simd is None or self.cpu_simd not in SIMD_ORDER:
            return None
        if SIMD_ORDER.index(self.kernel_simd) >= SIMD_ORDER.index(self.cpu_simd):
            return None
        cost = (f"BLAS runs {self.kernel} ({SIMD_NAMES[self.kernel_simd]}) kernels on a CPU with "
                f"{SIMD_NAMES[self.cpu_simd]}: matrix products, most of a training step, run "
                "2-5x slower (sgemm 24.5 against 110 GFLOP/s on a Xeon with AVX-512)")
        if forced:
            return f"{cost}; OPENBLAS_CORETYPE={forced} chose them: unset it for lmcore's command"
        return f"{cost}; this OpenBLAS does not know this CPU: pip install --upgrade scipy-openblas32"


def report() -> None:
    """The BLAS line a command prints at its start, and a warning when its kernels are too old."""
    info = blas_info()
    print(info.line())
    warning = info.warning(os.environ.get("OPENBLAS_CORETYPE"))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def blas_info() -> BlasInfo:
    """The BLAS the engine runs: library, version, kernel family, SIMD, threads."""
    from lmcore import _core

    config = _core.blas_config()  # "OpenBLAS 0.3.34.481.3 DYNAMIC_ARCH ...": the wheel's own version
    version = re.search(r"OpenBLAS\s+((\d+\.\d+\.\d+)[\d.]*)", config)
    kernel = _core.blas_core()
    return BlasInfo(
        name="OpenBLAS",
        version=version.group(2) if version else "unknown",
        package=f"scipy-openblas32 {version.group(1)}" if version else "scipy-openblas32",
        kernel=kernel,
        kernel_simd=KERNEL_SIMD.get(kernel.lower()),
        cpu_simd=_core.simd_level(),
        threads=_core.num_threads(),
        cpu=cpu_name(),
    )


def cpu_name() -> str:
    """The CPU's name with its family and model, as /proc/cpuinfo gives them (the name alone may not
    tell a Zen 4 from a Zen 5, and speed figures mean little without it)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" not in fields:
        import platform

        return platform.processor() or platform.machine() or "unknown CPU"
    return f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"
