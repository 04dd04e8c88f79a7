//! A running generation: tern generates on a thread of its own and hands text pieces
//! through a channel to the Python thread that iterates, which waits with the GIL
//! released and checks for signals (Ctrl-C) between pieces and every 50 ms. A
//! KeyboardInterrupt, or dropping the iterator, cancels the generation: the runtime's
//! `emit` callback refuses the next token, so it stops within one token.

use crate::model::Inner;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tern::generate::{generate, Finish, GenStats, GenerateOptions};

/// How often a waiting iterator looks for signals when no piece comes.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

enum Event {
    Piece(String),
    Done(anyhow::Result<GenStats>),
}

/// The error the `emit` callback returns to stop a cancelled generation.
#[derive(Debug)]
struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("generation cancelled")
    }
}

impl std::error::Error for Cancelled {}

/// The receiving end and what is known once the generation ended.
struct Progress {
    rx: Receiver<Event>,
    stats: Option<GenStats>,
}

/// An iterator over the text pieces of a running generation; joined, they are the
/// generated text. After the last piece, `finish_reason`, `prompt_tokens` and
/// `completion_tokens` describe the run.
#[pyclass(frozen, module = "tern._tern")]
pub struct Generation {
    /// Locked only while the GIL is released (or for a moment, never across a GIL wait).
    progress: Mutex<Progress>,
    cancel: Arc<AtomicBool>,
    prompt_tokens: usize,
}

impl Generation {
    /// Starts generating `opts.max_new` tokens after `ids` on a new thread.
    pub fn start(inner: Arc<Inner>, ids: Vec<u32>, opts: GenerateOptions) -> anyhow::Result<Self> {
        let (tx, rx) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        let prompt_tokens = ids.len();
        std::thread::Builder::new().name("tern-generate".into()).spawn(move || {
            let s = &inner.session;
            let result = inner.with_threads(|| {
                generate(&s.model, &s.tok, &ids, &opts, &mut |piece| {
                    if stop.load(Ordering::Relaxed) {
                        return Err(Cancelled.into());
                    }
                    if !piece.is_empty() {
                        // A closed channel: the iterator is gone, nobody reads further.
                        tx.send(Event::Piece(piece.to_string())).map_err(|_| Cancelled)?;
                    }
                    Ok(())
                })
            });
            let _ = tx.send(Event::Done(result));
        })?;
        Ok(Generation { progress: Mutex::new(Progress { rx, stats: None }), cancel, prompt_tokens })
    }

    fn stats(&self) -> Option<GenStats> {
        self.progress.lock().ok().and_then(|p| p.stats.clone())
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

#[pymethods]
impl Generation {
    /// The generation itself (it is its own iterator).
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next text piece; raises StopIteration at the end, KeyboardInterrupt on Ctrl-C
    /// (cancelling the generation), or the generation's error.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        loop {
            if let Err(e) = py.check_signals() {
                self.cancel.store(true, Ordering::Relaxed);
                return Err(e);
            }
            let event = py.detach(|| {
                let p = self.progress.lock().map_err(|_| RecvTimeoutError::Disconnected)?;
                if p.stats.is_some() {
                    return Err(RecvTimeoutError::Disconnected);
                }
                p.rx.recv_timeout(SIGNAL_POLL)
            });
            match event {
                Ok(Event::Piece(text)) => return Ok(Some(text)),
                Ok(Event::Done(Ok(stats))) => {
                    if let Ok(mut p) = self.progress.lock() {
                        p.stats = Some(stats);
                    }
                    return Ok(None);
                }
                // Cancelled here: the iteration simply ends.
                Ok(Event::Done(Err(e))) if e.is::<Cancelled>() => return Ok(None),
                // Later calls see a closed channel and stop.
                Ok(Event::Done(Err(e))) => return Err(crate::errors::to_py(e, None)),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
            }
        }
    }

    /// "stop" (end of sequence or a stop string), "length" (max_tokens reached), or None
    /// while running.
    #[getter]
    fn finish_reason(&self) -> Option<&'static str> {
        self.stats().map(|s| match s.finish {
            Finish::Eos | Finish::Stop => "stop",
            Finish::Length => "length",
        })
    }

    /// Tokens of the prompt (BOS included).
    #[getter]
    fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Tokens generated (an end-of-sequence token not counted), or None while running.
    #[getter]
    fn completion_tokens(&self) -> Option<usize> {
        self.stats().map(|s| s.gen_tokens - usize::from(s.finish == Finish::Eos))
    }

    /// Stops the generation (at the next token) and ends the iteration.
    fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}
