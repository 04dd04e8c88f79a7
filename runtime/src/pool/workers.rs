//! The pool itself: `threads - 1` persistent workers and the caller, claiming the bands
//! of one region at a time.

use super::timing::{stall_excess, RegionTiming, StallLog};
use super::{Job, Site, CURRENT};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// (epoch, type-erased job) of a region.
type Published = (u64, Option<(usize, usize)>);

/// A value alone in its cache lines (128 bytes, as the prefetchers fetch lines in pairs).
/// The threads hand each other every region through the few atomics of [`Shared`]; where
/// two share a line, a write to one takes the line from the thread that reads the other,
/// which costs most when the threads' cores sit on different dies (`examples/pool_overhead.rs`
/// measures it).
#[repr(align(128))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Shared {
    /// The current region's epoch (high 32 bits; low bits unused).
    state: Line<AtomicU64>,
    /// Per thread, its contiguous segment of the region's bands: epoch (high 16 bits),
    /// front (24 bits), back (24 bits). The owner claims from the front; a thread that ran
    /// out steals from the back of another's segment. Every claim is a compare-and-swap
    /// that names the epoch, so no claim can land in another region. Each in its own
    /// line: the owner's claims then stay in its own cache.
    segments: Vec<Line<AtomicU64>>,
    /// The latest region.
    job: Line<Mutex<Published>>,
    /// Workers inside a region (registered before their first claim).
    active: Line<AtomicUsize>,
    sleepers: AtomicUsize,
    /// Set while the caller prefers to run regions alone (another process holds a core):
    /// idle workers then sleep at once instead of spinning, so that they do not take CPU
    /// time from the caller, which may share a core with them.
    quiet: AtomicBool,
    shutdown: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// A persistent pool of `threads - 1` workers plus the calling thread.
pub struct Pool {
    shared: Arc<Shared>,
    epoch: AtomicU64,
    workers: Vec<JoinHandle<()>>,
    /// Per region shape (call site and band count: in practice, which matmul), how long
    /// regions take with the workers and by the caller alone.
    shapes: Mutex<Vec<RegionTiming>>,
    /// Recent stalls: parallel regions that waited for a preempted worker.
    stalls: Mutex<StallLog>,
    start: std::time::Instant,
}

const SPINS: u32 = 20_000;

/// Regions at least this long (ns, either mode) decide whether idle workers spin.
const QUIET_MIN_NS: u64 = 50_000;
const YIELDS: u32 = 200;

fn erase(job: Job<'_>) -> (usize, usize) {
    // SAFETY: a `&dyn Fn` is two words; only its lifetime is forgotten here, and `restore`
    // gives the same type back. Liveness is argued where the job is called.
    unsafe { std::mem::transmute::<Job<'_>, (usize, usize)>(job) }
}

/// # Safety
/// `raw` must come from `erase` of a job that is still alive when it is called.
unsafe fn restore<'a>(raw: (usize, usize)) -> Job<'a> {
    std::mem::transmute::<(usize, usize), Job<'a>>(raw)
}

const SEG_EPOCH: u64 = 0xFFFF;
const SEG_MASK: u64 = 0xFF_FFFF;

fn seg(epoch: u64, front: u64, back: u64) -> u64 {
    (epoch & SEG_EPOCH) << 48 | front << 24 | back
}

/// Claims one band of segment `s` for region `epoch`, from the front or the back.
fn claim(s: &AtomicU64, epoch: u64, from_back: bool) -> Option<usize> {
    loop {
        let v = s.load(Ordering::SeqCst);
        let (e, front, back) = (v >> 48, (v >> 24) & SEG_MASK, v & SEG_MASK);
        if e != epoch & SEG_EPOCH || front >= back {
            return None;
        }
        let (next, band) =
            if from_back { (seg(e, front, back - 1), back - 1) } else { (seg(e, front + 1, back), front) };
        if s.compare_exchange(v, next, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            return Some(band as usize);
        }
    }
}

/// Runs thread `me`'s own segment front to back, then steals from the others' backs.
fn claim_and_run(segments: &[Line<AtomicU64>], me: usize, epoch: u64, job: impl Fn(usize)) {
    while let Some(b) = claim(&segments[me], epoch, false) {
        job(b);
    }
    for k in 1..segments.len() {
        let other = &segments[(me + k) % segments.len()];
        while let Some(b) = claim(other, epoch, true) {
            job(b);
        }
    }
}

fn worker(shared: Arc<Shared>, me: usize) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        loop {
            if shared.shutdown.load(Ordering::SeqCst) {
                return;
            }
            let e = shared.state.load(Ordering::SeqCst) >> 32;
            if e != seen {
                seen = e;
                break;
            }
            spins += 1;
            if shared.quiet.load(Ordering::Relaxed) {
                spins = spins.max(SPINS + YIELDS);
            }
            if spins < SPINS {
                std::hint::spin_loop();
            } else if spins < SPINS + YIELDS {
                std::thread::yield_now();
            } else {
                let guard = shared.lock.lock().expect("pool lock");
                shared.sleepers.fetch_add(1, Ordering::SeqCst);
                // Re-checked after announcing the sleep: `run` publishes, then looks for sleepers.
                if shared.state.load(Ordering::SeqCst) >> 32 == seen && !shared.shutdown.load(Ordering::SeqCst) {
                    drop(shared.wake.wait(guard).expect("pool lock"));
                } else {
                    drop(guard);
                }
                shared.sleepers.fetch_sub(1, Ordering::SeqCst);
                spins = 0;
            }
        }
        shared.active.fetch_add(1, Ordering::SeqCst);
        let (epoch, raw) = *shared.job.lock().expect("pool job");
        if let (true, Some(raw)) = (epoch == seen, raw) {
            // SAFETY: the job is called only after a successful claim of a band of its own
            // epoch. `run` for that epoch returns only after it has seen every band claimed
            // *and then* `active == 0`; this worker registered in `active` before claiming,
            // and leaves only after the job returned. So the job is alive whenever called.
            let job = unsafe { restore(raw) };
            claim_and_run(&shared.segments, me, epoch, job);
        }
        shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Pool {
    pub fn new(threads: usize) -> Arc<Self> {
        let shared = Arc::new(Shared {
            state: Line(AtomicU64::new(0)),
            segments: (0..threads.max(1)).map(|_| Line(AtomicU64::new(0))).collect(),
            job: Line(Mutex::new((0, None))),
            active: Line(AtomicUsize::new(0)),
            sleepers: AtomicUsize::new(0),
            quiet: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads.max(1))
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new().name(format!("tern-{i}")).spawn(move || worker(s, i)).expect("spawn worker")
            })
            .collect();
        Arc::new(Pool {
            shared,
            epoch: AtomicU64::new(0),
            workers,
            shapes: Mutex::new(Vec::new()),
            stalls: Mutex::new(StallLog::default()),
            start: std::time::Instant::now(),
        })
    }

    /// Runs `job(b)` for every band `b < n_bands` on all threads; returns when all are done.
    /// Workers that have not joined by the time the caller ran out of bands are not waited
    /// for. When another process holds a core, the workers can make a region slower, not
    /// faster (a preempted worker holds its band; three threads share two cores): the pool
    /// times each region shape in both modes (one region in 64 to 1024 runs the other mode)
    /// and runs alone while that is clearly faster.
    pub(super) fn run(&self, site: Site, n_bands: usize, job: Job<'_>) {
        let s = &self.shared;
        if self.workers.is_empty() || n_bands <= 1 {
            (0..n_bands).for_each(job);
            return;
        }
        let contended = self.stalls.lock().expect("pool stalls").contended(self.now());
        let (shape, (alone, probe)) = {
            let mut shapes = self.shapes.lock().expect("pool shapes");
            let i = match shapes.iter().position(|x| x.n_bands == n_bands && std::ptr::eq(x.site, site)) {
                Some(i) => i,
                None => {
                    shapes.push(RegionTiming::new(site, n_bands));
                    shapes.len() - 1
                }
            };
            let mode = shapes[i].next_run(contended);
            (shapes[i], mode)
        };
        let prefer_alone = alone != probe;
        // Workers idle quietly after a long region that runs better alone (another process
        // holds a core: the next region probably runs alone too, and a spinning worker
        // would compete with the caller). Short regions can run better alone merely
        // because their work is small; they leave the setting as it is.
        if shape.ns_parallel.max(shape.ns_alone) >= QUIET_MIN_NS && s.quiet.load(Ordering::Relaxed) != prefer_alone {
            s.quiet.store(prefer_alone, Ordering::Relaxed);
        }
        let t0 = std::time::Instant::now();
        if alone {
            (0..n_bands).for_each(job);
            let ns = t0.elapsed().as_nanos() as u64;
            self.update(site, n_bands, |x| x.record(true, ns, probe, contended));
            return;
        }
        let n = n_bands as u64;
        assert!(n <= SEG_MASK, "too many bands");
        let epoch = (self.epoch.fetch_add(1, Ordering::SeqCst) + 1) & SEG_EPOCH;
        let t = s.segments.len() as u64;
        for (i, sg) in s.segments.iter().enumerate() {
            let i = i as u64;
            sg.store(seg(epoch, n * i / t, n * (i + 1) / t), Ordering::SeqCst);
        }
        *s.job.lock().expect("pool job") = (epoch, Some(erase(job)));
        s.state.store(epoch << 32, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.lock.lock().expect("pool lock");
            s.wake.notify_all();
        }
        claim_and_run(&s.segments, 0, epoch, job);
        let mut spins = 0u32;
        while s.active.load(Ordering::SeqCst) > 0 {
            spins += 1;
            if spins < SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        let ns = t0.elapsed().as_nanos() as u64;
        if stall_excess(ns, shape.ns_parallel) > 0 {
            self.stalls.lock().expect("pool stalls").log(self.now());
        }
        self.update(site, n_bands, |x| x.record(false, ns, probe, contended));
    }

    /// Threads that run its regions, the caller included.
    pub(super) fn threads(&self) -> usize {
        self.shared.segments.len()
    }

    /// Nanoseconds since the pool started.
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn update(&self, site: Site, n_bands: usize, f: impl FnOnce(&mut RegionTiming)) {
        let mut shapes = self.shapes.lock().expect("pool shapes");
        if let Some(x) = shapes.iter_mut().find(|x| x.n_bands == n_bands && std::ptr::eq(x.site, site)) {
            f(x);
        }
    }

    /// Makes this pool the one `for_bands` uses on this thread while `f` runs.
    pub fn install<T>(self: &Arc<Self>, f: impl FnOnce() -> T) -> T {
        let prev = CURRENT.with(|c| c.replace(Some(self.clone())));
        let out = f();
        CURRENT.with(|c| *c.borrow_mut() = prev);
        out
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.lock.lock().expect("pool lock");
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::for_bands;

    #[test]
    fn every_band_runs_exactly_once() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            pool.install(|| {
                for n in [0usize, 1, 2, 7, 100, 1000] {
                    let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
                    for _ in 0..50 {
                        for_bands(n, &|b| {
                            hits[b].fetch_add(1, Ordering::Relaxed);
                        });
                    }
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 50), "threads {threads}, n {n}");
                }
            });
        }
    }

    #[test]
    fn sleeping_workers_wake_up() {
        let pool = Pool::new(2);
        pool.install(|| {
            let sum = AtomicU64::new(0);
            for_bands(10, &|b| {
                sum.fetch_add(b as u64, Ordering::Relaxed);
            });
            // Long enough for the worker to pass its spin and yield phases and sleep.
            std::thread::sleep(std::time::Duration::from_millis(200));
            for_bands(10, &|b| {
                sum.fetch_add(b as u64, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 90);
        });
    }
}
