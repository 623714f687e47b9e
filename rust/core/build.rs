//! Link the engine against OpenBLAS from PyPI's `scipy-openblas32` wheel (a current OpenBLAS that
//! knows today's CPUs, installed by pip, no root). Its symbols carry the `scipy_` prefix, which
//! `src/blas.rs` names. The library's folder is found, in this order, from:
//!   1. `LMCORE_OPENBLAS_LIB_DIR` (a folder holding libscipy_openblas.so), or
//!   2. the wheel installed for `PYO3_PYTHON`, else `$VIRTUAL_ENV/bin/python`, else `python3`.
//! Test and bench binaries get that folder as their rpath; the Python package loads the library
//! itself (python/lmcore/blas_library.py), so an installed wheel needs no LD_LIBRARY_PATH.

use std::path::{Path, PathBuf};
use std::process::Command;

const LIBRARY: &str = "scipy_openblas";
const HOW_TO_FIX: &str = "install it with `pip install \"scipy-openblas32>=0.3.30\"` into the Python that builds \
lmcore (PYO3_PYTHON or the active virtualenv), or point LMCORE_OPENBLAS_LIB_DIR at a folder holding libscipy_openblas.so";

fn main() {
    for var in ["LMCORE_OPENBLAS_LIB_DIR", "PYO3_PYTHON", "VIRTUAL_ENV"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let dir = match std::env::var_os("LMCORE_OPENBLAS_LIB_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => wheel_lib_dir().unwrap_or_else(|why| panic!("lmcore needs OpenBLAS from scipy-openblas32: {why}; {HOW_TO_FIX}")),
    };
    let file = dir.join(format!("lib{LIBRARY}.so"));
    if !file.is_file() && !dir.join(format!("lib{LIBRARY}.dylib")).is_file() {
        panic!("lmcore needs OpenBLAS from scipy-openblas32: no lib{LIBRARY} in {}; {HOW_TO_FIX}", dir.display());
    }
    println!("cargo:rerun-if-changed={}", file.display());
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=dylib={LIBRARY}");
    // This crate's own test and bench binaries find it through their rpath. The Python package
    // does not rely on one (it would name the build machine's folder): it loads the library itself.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
}

/// The wheel's `lib` folder, asked of the Python that builds lmcore.
fn wheel_lib_dir() -> Result<PathBuf, String> {
    let python = std::env::var_os("PYO3_PYTHON")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("VIRTUAL_ENV").map(|venv| Path::new(&venv).join("bin").join("python")))
        .unwrap_or_else(|| PathBuf::from("python3"));
    let output = Command::new(&python)
        .args(["-c", "import scipy_openblas32; print(scipy_openblas32.get_lib_dir())"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !output.status.success() {
        return Err(format!("{} has no scipy_openblas32 ({})", python.display(), String::from_utf8_lossy(&output.stderr).trim().lines().last().unwrap_or("")));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}
