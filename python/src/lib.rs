//! `tern._tern`: the native half of the `tern` Python package.
//!
//! Thin by design: every computation is a call into the runtime (`tern`) or the
//! converter (`tern_convert`), the same calls the CLIs make; this crate only converts
//! arguments, results and errors, and releases the GIL while tern computes.
#![deny(unsafe_code)]

mod errors;
mod model;
mod stream;

use errors::{to_py, TernError};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::path::PathBuf;

/// Converts a Hugging Face BitNet b1.58 checkpoint folder into one `.tern` file.
///
/// The converter's library call, as `tern-convert` makes it: the same checks, the same
/// atomic write (`dst.partial`, synced, renamed) and the same bytes. `output_type` is the
/// encoding of the embedding and untied output matrices, as `--output-type`: "f16"
/// (default), "f32", "q8" (int8 with a scale per row), "q6" or "q4" (6 or 4 bits with an f16
/// scale per 32 values).
#[pyfunction]
#[pyo3(signature = (src_dir, dst, output_type = "f16"))]
fn convert(py: Python<'_>, src_dir: PathBuf, dst: PathBuf, output_type: &str) -> PyResult<()> {
    let embed = tern_convert::output_types::output_type(output_type)
        .map_err(|e| PyValueError::new_err(e.to_string().replace("output type", "output_type")))?;
    let opts = tern_convert::Options { embed, progress: false, pause_per_tensor: None };
    py.detach(|| tern_convert::convert(&src_dir, &dst, &opts)).map(drop).map_err(|e| to_py(e, Some(&src_dir)))
}

/// Checks a `.tern` file's structure, every checksum and every padding byte, as `tern
/// verify` does. Returns None, or raises TernError naming the first bad region (tensor).
#[pyfunction]
fn verify(py: Python<'_>, path: PathBuf) -> PyResult<()> {
    py.detach(|| tern::ModelFile::open(&path)?.verify()).map_err(|e| to_py(e, Some(&path)))
}

#[pymodule]
fn _tern(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("TernError", m.py().get_type::<TernError>())?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_class::<model::Model>()?;
    m.add_class::<stream::Generation>()?;
    Ok(())
}
