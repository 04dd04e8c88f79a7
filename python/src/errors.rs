//! tern's errors as Python exceptions: bad arguments are `ValueError`, a missing file is
//! `FileNotFoundError` (naming it), anything else (a bad or corrupt file, a failed
//! verify) is `tern.TernError`. The message is the whole chain, as the CLI prints it.

use pyo3::exceptions::{PyException, PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;
use std::path::Path;
use tern::args::ArgError;

pyo3::create_exception!(
    tern,
    TernError,
    PyException,
    "A bad or corrupt .tern file, a checkpoint the converter refuses, or a failed verify."
);

/// The errno of a missing file (POSIX and Windows agree on 2).
const ENOENT: i32 = 2;

/// `e` as a Python exception; `path`: the path the call was given, named by a
/// `FileNotFoundError` when it does not exist.
pub fn to_py(e: anyhow::Error, path: Option<&Path>) -> PyErr {
    let msg = format!("{e:#}");
    if e.chain().any(|c| c.is::<ArgError>()) {
        return PyValueError::new_err(msg);
    }
    // The path the call was given is missing: whatever step noticed it, that is the cause.
    if let Some(p) = path.filter(|p| !p.exists()) {
        return PyFileNotFoundError::new_err((ENOENT, msg, p.display().to_string()));
    }
    let mut io = e.chain().filter_map(|c| c.downcast_ref::<std::io::Error>());
    if io.any(|io| io.kind() == std::io::ErrorKind::NotFound) {
        return PyFileNotFoundError::new_err((ENOENT, msg));
    }
    TernError::new_err(msg)
}

/// A bad argument of the binding's own (a Python-only parameter) as `ValueError`.
pub fn arg_error(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

/// A Python integer that must be at least `min`, as a `usize`: `name` and the value
/// are in the `ValueError` otherwise (negative values included, which `usize`
/// extraction would report as an `OverflowError`).
pub fn count(name: &str, value: i64, min: usize) -> PyResult<usize> {
    usize::try_from(value)
        .ok()
        .filter(|&v| v >= min)
        .ok_or_else(|| arg_error(format!("{name} must be at least {min} (got {value})")))
}

/// Token ids from Python integers: each must index the model's vocabulary
/// (the runtime's check, so the message is the CLI's).
pub fn token_ids(ids: &[i64], config: &tern_format::ModelConfig) -> PyResult<Vec<u32>> {
    let ids: Vec<u32> = ids
        .iter()
        .map(|&v| {
            u32::try_from(v).map_err(|_| {
                arg_error(format!("token id {v} is outside the vocabulary (0 to {})", config.vocab_size - 1))
            })
        })
        .collect::<PyResult<_>>()?;
    tern::args::check_tokens(config, &ids).map_err(|e| arg_error(e.0))?;
    Ok(ids)
}
