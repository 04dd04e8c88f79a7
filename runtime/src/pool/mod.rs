//! Work distribution for the matmuls: a small persistent pool tuned for many short
//! parallel regions (5 per layer and the output matrix: 121 per decoded token of the
//! 24-layer model), or rayon.
//!
//! A region is split into bands; every thread, the caller included, claims the next
//! band with one atomic increment until none are left, so a thread that shares its core
//! with another process simply claims fewer bands. Each thread starts on its own contiguous
//! segment of bands (sequential reads suit the prefetchers) and then steals from the back
//! of the others'. Idle workers spin briefly (a region usually follows within
//! microseconds), then yield, then sleep on a condvar. If the caller keeps waiting for a
//! worker preempted mid-band (its core is taken), the workers sit out for a while, and
//! meanwhile sleep at once instead of spinning: each region shape is timed in both modes
//! and runs alone while that is clearly faster, the mean cost of those waits included
//! while they come often.
//!
//! `TERN_POOL=rayon` selects rayon instead (`tern bench` reports which; why it stays:
//! [`with_threads`]).
//!
//! Three rooms: `workers` is the pool itself (threads, band claiming, the hand-off of a
//! region); `timing` times each region shape in both modes and decides whether it runs
//! alone or in parallel; `split` cuts a region's output into the bands its jobs write.
//! This module picks the pool and starts regions ([`for_bands`]).

mod split;
mod timing;
mod workers;

use std::cell::RefCell;
use std::sync::Arc;

pub use split::{
    for_each_chunk_mut, for_each_chunk_mut2, for_each_chunk_mut_n, for_each_column_mut, ColumnJob, ColumnMut, PairJob,
};
pub use workers::Pool;

/// The job of one parallel region: called with band indices until all are claimed.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// Where a parallel region starts in the code (`#[track_caller]` carries it from the
/// model's call through the helpers below), so that regions of equal band counts but
/// different work keep separate timings.
type Site = &'static std::panic::Location<'static>;

thread_local! {
    /// The pool installed on this thread ([`Pool::install`]).
    static CURRENT: RefCell<Option<Arc<Pool>>> = const { RefCell::new(None) };
}

/// Runs `f` with `threads` threads for its parallel regions: a [`Pool`], or rayon when
/// `TERN_POOL=rayon`. Running the whole of `f` inside means every region starts on a
/// thread of that pool, with no hand-off from an outside thread.
///
/// Why rayon stays: it is the baseline the pool must beat, and the pool does not beat it
/// everywhere. With one core held by a busy loop the pool runs clearly ahead, and on an
/// idle machine the two are within noise; but on a machine oversubscribed several times
/// over (other builds on both cores), rayon ran ahead at 2 threads in every round
/// measured (BENCHMARKS.md, "Restructure"). Until the pool wins there too, rayon stays one
/// environment variable away; it also runs the regions of callers that install no pool
/// (the library's tests).
pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> Result<T, rayon::ThreadPoolBuildError> {
    if std::env::var("TERN_POOL").as_deref() == Ok("rayon") {
        Ok(rayon::ThreadPoolBuilder::new().num_threads(threads).build()?.install(f))
    } else {
        Ok(Pool::new(threads).install(f))
    }
}

/// The number of threads that run parallel regions started on this thread.
pub fn threads() -> usize {
    CURRENT.with(|c| c.borrow().as_ref().map(|p| p.threads())).unwrap_or_else(rayon::current_num_threads)
}

/// The name of the work distribution in use on this thread.
pub fn current_name() -> &'static str {
    if CURRENT.with(|c| c.borrow().is_some()) {
        "tern pool"
    } else {
        "rayon"
    }
}

/// Runs `job(b)` for every `b < n_bands` in parallel: on the installed [`Pool`], or on
/// rayon when none is installed.
#[track_caller]
pub fn for_bands(n_bands: usize, job: &(dyn Fn(usize) + Sync)) {
    let site = std::panic::Location::caller();
    let pool = CURRENT.with(|c| c.borrow().clone());
    match pool {
        Some(p) => p.run(site, n_bands, job),
        None => {
            use rayon::prelude::*;
            (0..n_bands).into_par_iter().for_each(job);
        }
    }
}
