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
//! `TERN_POOL=rayon` selects rayon instead (for comparison; `tern bench` reports which).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The job of one parallel region: called with band indices until all are claimed.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// Where a parallel region starts in the code (`#[track_caller]` carries it from the
/// model's call through the helpers below), so that regions of equal band counts but
/// different work keep separate timings.
type Site = &'static std::panic::Location<'static>;

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

/// When the last [`STALLS_CONTENDED`] stalls happened (ns since the pool started), oldest
/// first.
#[derive(Default)]
struct StallLog([Option<u64>; STALLS_CONTENDED]);

impl StallLog {
    fn log(&mut self, now: u64) {
        self.0.rotate_left(1);
        self.0[STALLS_CONTENDED - 1] = Some(now);
    }

    /// Whether stalls come often enough to be another process on a worker's core rather
    /// than a moment's preemption: the last [`STALLS_CONTENDED`] within [`CONTENDED_WINDOW_NS`].
    fn contended(&self, now: u64) -> bool {
        self.0[0].is_some_and(|t| now.saturating_sub(t) < CONTENDED_WINDOW_NS)
    }
}

/// Timing of one region shape (where in the code it starts, and its band count): regions
/// run, moving averages of ns with and without workers.
#[derive(Clone, Copy)]
struct RegionTiming {
    site: Site,
    n_bands: usize,
    runs: u64,
    /// The run at which the mode not chosen is timed next, and the interval after that.
    next_probe: u64,
    probe_every: u64,
    ns_parallel: u64,
    ns_alone: u64,
    /// Moving averages of what runs took beyond twice their typical time (`ns_parallel`,
    /// `ns_alone`) and [`STALL_MIN`], which those leave out by design: in parallel, mostly
    /// the cost of a worker preempted while it holds a band (the caller waits for it).
    ns_parallel_stall: u64,
    ns_alone_stall: u64,
}

impl RegionTiming {
    /// A shape not run yet: its first run probes (alone), its second runs in parallel.
    fn new(site: Site, n_bands: usize) -> Self {
        RegionTiming {
            site,
            n_bands,
            runs: 0,
            next_probe: 1,
            probe_every: PROBE_EVERY,
            ns_parallel: 0,
            ns_alone: 0,
            ns_parallel_stall: 0,
            ns_alone_stall: 0,
        }
    }

    /// Alone only when clearly faster: parallel timings include waking sleeping workers,
    /// which running alone makes more frequent, so a small edge must not tip the choice.
    /// While stalls come often (`contended`: another process holds a worker's core), each
    /// mode's timing includes the mean cost of its stalls.
    fn prefers_alone(&self, contended: bool) -> bool {
        let (alone, parallel) = match contended {
            true => (self.ns_alone + self.ns_alone_stall, self.ns_parallel + self.ns_parallel_stall),
            false => (self.ns_alone, self.ns_parallel),
        };
        self.ns_alone != 0 && alone * 5 < parallel * 4
    }

    /// Counts a run and says how it goes: (alone, probe). Now and then a region of a shape
    /// runs the mode not chosen, so that both timings stay current (the first ones include
    /// page faults on the freshly mapped weights).
    fn next_run(&mut self, contended: bool) -> (bool, bool) {
        self.runs += 1;
        let probe = self.runs == self.next_probe;
        (self.prefers_alone(contended) != probe, probe)
    }

    /// Adds the time of a region run alone or in parallel; after a probe (a run of the
    /// mode not chosen), schedules the next one: later if the probe's own time confirms
    /// the choice, soon if it does not (the averages take a few probes to follow). A run
    /// that changes the choice brings the next probe forward too.
    fn record(&mut self, alone: bool, ns: u64, probe: bool, contended: bool) {
        let chose_alone = self.prefers_alone(contended);
        // A moving average in which one outlier (a preemption, a page fault, a slow wake-up)
        // moves the value by at most a quarter of its double: a shape that runs alone
        // updates its parallel timing only at probes, so one bad region must not send it
        // there; a lasting slowdown still does within a few regions.
        let avg = |old: u64, new: u64| if old == 0 { new } else { (old * 3 + new.min(old * 2)) / 4 };
        let confirms = if alone { ns * 5 >= self.ns_parallel * 4 } else { self.ns_alone * 5 < ns * 4 };
        // A stall is rare while the worker has a core to itself (a page fault, another
        // tenant's moment, on either thread); when another process holds the worker's
        // core, it comes every few dozen parallel regions and costs up to a scheduler slice
        // (milliseconds). The capped averages leave such outliers out on purpose; these
        // plain averages of the excess (zero for most runs) keep their mean cost for the
        // choice while stalls come often, for both modes alike.
        let stall = |avg: u64, typical: u64| (avg * 7 + stall_excess(ns, typical)) / 8;
        if alone {
            self.ns_alone_stall = stall(self.ns_alone_stall, self.ns_alone);
            self.ns_alone = avg(self.ns_alone, ns);
        } else {
            self.ns_parallel_stall = stall(self.ns_parallel_stall, self.ns_parallel);
            self.ns_parallel = avg(self.ns_parallel, ns);
        }
        if probe {
            self.probe_every = if confirms { (self.probe_every * 2).min(PROBE_EVERY_MAX) } else { PROBE_EVERY };
            self.next_probe = self.runs + self.probe_every;
        } else if self.prefers_alone(contended) != chose_alone {
            self.probe_every = PROBE_EVERY;
            self.next_probe = self.next_probe.min(self.runs + PROBE_EVERY);
        }
    }
}

/// A region of each shape runs the mode not currently chosen once in `PROBE_EVERY` runs;
/// each probe that confirms the choice doubles the interval, up to `PROBE_EVERY_MAX`
/// (a probe costs: with a busy core, a parallel probe can wait milliseconds for a
/// preempted worker).
const PROBE_EVERY: u64 = 64;
const PROBE_EVERY_MAX: u64 = 1024;

/// What a run takes beyond twice its typical time and this (ns) is a stall: a preempted
/// thread waits a scheduler slice (~1 ms); shorter delays (a slow wake-up, another
/// tenant's moment on a loaded machine) come and go without a pattern.
const STALL_MIN: u64 = 250_000;

/// The stall in a run of `ns` of a shape that typically takes `typical` (0 if unknown):
/// what it took beyond twice that and [`STALL_MIN`].
fn stall_excess(ns: u64, typical: u64) -> u64 {
    if typical == 0 {
        0
    } else {
        ns.saturating_sub(2 * typical + STALL_MIN)
    }
}

/// Stalls count in the choice only while [`STALLS_CONTENDED`] of them came within
/// [`CONTENDED_WINDOW_NS`]. With another process on a worker's core they come every few dozen
/// parallel regions; on a merely loaded machine a few per second, and reacting to each of
/// those (a shape alone for hundreds of regions after one) cost 2–4% of tg64 at 2 threads.
const STALLS_CONTENDED: usize = 3;
const CONTENDED_WINDOW_NS: u64 = 500_000_000;

const SPINS: u32 = 20_000;

/// Regions at least this long (ns, either mode) decide whether idle workers spin.
const QUIET_MIN_NS: u64 = 50_000;
const YIELDS: u32 = 200;

thread_local! {
    static CURRENT: RefCell<Option<Arc<Pool>>> = const { RefCell::new(None) };
}

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
    fn run(&self, site: Site, n_bands: usize, job: Job<'_>) {
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

/// Runs `f` with `threads` threads for its parallel regions: a [`Pool`], or rayon when
/// `TERN_POOL=rayon` (kept for comparison). Running the whole of `f` inside means every
/// region starts on a thread of that pool, with no hand-off from an outside thread.
pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> Result<T, rayon::ThreadPoolBuildError> {
    if std::env::var("TERN_POOL").as_deref() == Ok("rayon") {
        Ok(rayon::ThreadPoolBuilder::new().num_threads(threads).build()?.install(f))
    } else {
        Ok(Pool::new(threads).install(f))
    }
}

/// The number of threads that run parallel regions started on this thread.
pub fn threads() -> usize {
    CURRENT.with(|c| c.borrow().as_ref().map(|p| p.shared.segments.len())).unwrap_or_else(rayon::current_num_threads)
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

/// Splits `out` into chunks of `chunk` elements (the last may be shorter) and runs
/// `job(index, chunk)` for each, in parallel.
#[track_caller]
pub fn for_each_chunk_mut<T: Send>(out: &mut [T], chunk: usize, job: &(dyn Fn(usize, &mut [T]) + Sync)) {
    for_each_chunk_mut_n([out], [chunk], &|_, b, c| job(b, c));
}

/// Like [`for_each_chunk_mut`] over several slices in one parallel region: slice `i`
/// is split into chunks of `chunks[i]` elements (the last may be shorter) and
/// `job(i, c, chunk)` runs for every chunk `c` of every slice. One region instead of
/// `N` saves a fork-join per slice (q/k/v, gate/up).
#[track_caller]
pub fn for_each_chunk_mut_n<T: Send, const N: usize>(
    outs: [&mut [T]; N],
    chunks: [usize; N],
    job: &(dyn Fn(usize, usize, &mut [T]) + Sync),
) {
    let chunks = chunks.map(|c| c.max(1));
    let lens = outs.each_ref().map(|o| o.len());
    let counts: [usize; N] = std::array::from_fn(|i| lens[i].div_ceil(chunks[i]));
    let bases = outs.map(|o| SharedMut(o.as_mut_ptr()));
    for_bands(counts.iter().sum(), &|mut b| {
        let mut i = 0;
        while b >= counts[i] {
            b -= counts[i];
            i += 1;
        }
        let start = b * chunks[i];
        // SAFETY: chunk `b` of slice `i` lies inside it (start < lens[i]); chunks of one
        // slice are disjoint and the slices are distinct `&mut` borrows; `for_bands` runs
        // each band, so each (i, b), exactly once; and every slice stays mutably borrowed
        // for the whole call, which returns only after every job is done.
        let slice =
            unsafe { std::slice::from_raw_parts_mut(bases[i].ptr().add(start), chunks[i].min(lens[i] - start)) };
        job(i, b, slice);
    });
}

/// The chunks of one column, over a run of rows, of a grid of chunks (see
/// [`for_each_column_mut`]): one row at a time.
pub struct ColumnMut<'a, T> {
    base: SharedMut<T>,
    chunk: usize,
    cols: usize,
    col: usize,
    rows: std::ops::Range<usize>,
    _out: std::marker::PhantomData<&'a mut [T]>,
}

impl<T> ColumnMut<'_, T> {
    /// The chunk of row `r` (which must be in this job's run of rows) in this column.
    pub fn row(&mut self, r: usize) -> &mut [T] {
        assert!(self.rows.contains(&r), "row {r} is not in this job's rows {:?}", self.rows);
        // SAFETY: the chunk (r, col) lies inside `out` (r < rows, col < cols, checked in
        // `for_each_column_mut`); only this job holds (r, col) (its column and run of rows
        // are its own); and the slice borrows `self` mutably, so no two live at once.
        unsafe {
            std::slice::from_raw_parts_mut(self.base.ptr().add((r * self.cols + self.col) * self.chunk), self.chunk)
        }
    }
}

/// A job over one column's run of rows: `(col, rows, column)`.
pub type ColumnJob<'a, T> = dyn Fn(usize, std::ops::Range<usize>, &mut ColumnMut<'_, T>) + Sync + 'a;

/// For `out` of `rows × cols` chunks (of `chunk` elements, row-major), runs
/// `job(col, row_range, column)` for every column and every run of up to `run` rows, in
/// parallel, column by column: each job writes its rows of its column (attention: one
/// head's outputs for a run of a prompt's tokens) through `column`.
#[track_caller]
pub fn for_each_column_mut<T: Send>(out: &mut [T], chunk: usize, rows: usize, run: usize, job: &ColumnJob<'_, T>) {
    let cols = out.len() / (rows * chunk).max(1);
    assert!(
        out.len() == rows * cols * chunk && run > 0,
        "for_each_column_mut: {} is not {rows} rows of whole chunks",
        out.len()
    );
    let runs = rows.div_ceil(run);
    let base = SharedMut(out.as_mut_ptr());
    for_bands(cols * runs, &|b| {
        let (col, r0) = (b / runs, b % runs * run);
        let rows = r0..(r0 + run).min(rows);
        let mut column = ColumnMut {
            base: SharedMut(base.ptr()),
            chunk,
            cols,
            col,
            rows: rows.clone(),
            _out: std::marker::PhantomData,
        };
        job(col, rows, &mut column);
    });
}

/// A job over one chunk of each of two slices.
pub type PairJob<'a, A, B> = dyn Fn(usize, &mut [A], &mut [B]) + Sync + 'a;

/// Like [`for_each_chunk_mut`] over two slices at once: job `i` gets chunk `i` of `a`
/// (`ca` elements) and chunk `i` of `b` (`cb` elements), for `i < n`. Both slices must
/// hold `n` whole chunks.
#[track_caller]
pub fn for_each_chunk_mut2<A: Send, B: Send>(
    n: usize,
    a: &mut [A],
    ca: usize,
    b: &mut [B],
    cb: usize,
    job: &PairJob<'_, A, B>,
) {
    assert!(a.len() >= n * ca && b.len() >= n * cb, "for_each_chunk_mut2: slices shorter than {n} chunks");
    if n == 1 {
        return job(0, &mut a[..ca], &mut b[..cb]);
    }
    let (pa, pb) = (SharedMut(a.as_mut_ptr()), SharedMut(b.as_mut_ptr()));
    for_bands(n, &|i| {
        // SAFETY: as in `for_each_chunk_mut_n`: chunk `i` of each slice lies inside it (both
        // hold `n` whole chunks, checked above), chunks are disjoint, each index runs
        // once, and both slices stay mutably borrowed until every job has returned.
        let (ra, rb) = unsafe {
            (
                std::slice::from_raw_parts_mut(pa.ptr().add(i * ca), ca),
                std::slice::from_raw_parts_mut(pb.ptr().add(i * cb), cb),
            )
        };
        job(i, ra, rb);
    });
}

/// A raw pointer shared by the threads of one region (see `for_each_chunk_mut_n`).
#[derive(Clone, Copy)]
struct SharedMut<T>(*mut T);

impl<T> SharedMut<T> {
    /// (A method, so that closures capture the `Sync` wrapper rather than the raw field.)
    fn ptr(&self) -> *mut T {
        self.0
    }
}

// SAFETY: only used by `for_each_chunk_mut_n`, `for_each_chunk_mut2` and `ColumnMut`, where
// each thread touches disjoint chunks.
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_back_off_while_they_confirm_and_outliers_are_damped() {
        let site = std::panic::Location::caller();
        let mut x = RegionTiming { runs: 1, ns_parallel: 1_000_000, ..RegionTiming::new(site, 4) };
        // Run 1 probes alone: slower than parallel, so the choice (parallel) holds and the
        // interval doubles, up to the cap.
        x.record(true, 2_000_000, true, false);
        assert_eq!((x.ns_alone, x.probe_every, x.next_probe), (2_000_000, 2 * PROBE_EVERY, 1 + 2 * PROBE_EVERY));
        for _ in 0..10 {
            x.runs = x.next_probe;
            x.record(true, 2_000_000, true, false);
        }
        assert_eq!(x.probe_every, PROBE_EVERY_MAX);
        // One parallel region 10× slower moves the typical time by a quarter of a doubling;
        // its excess over twice that and STALL_MIN goes into the stall average.
        x.record(false, 10_000_000, false, true);
        assert_eq!((x.ns_parallel, x.ns_parallel_stall), (1_250_000, 968_750));
        assert!(!x.prefers_alone(true));
        // A second one tips the choice while stalls come often (not otherwise), and the
        // next probe comes soon.
        let runs = x.runs;
        x.record(false, 10_000_000, false, true);
        assert_eq!(
            (x.ns_parallel, x.ns_parallel_stall, x.probe_every, x.next_probe),
            (1_562_500, 1_753_906, PROBE_EVERY, runs + PROBE_EVERY)
        );
        assert!(x.prefers_alone(true));
        assert!(!x.prefers_alone(false));
        // Probes that run clearly faster in parallel bring the stall average down by an
        // eighth each: parallel again after a few.
        for (stall, alone) in [(1_534_667, true), (1_342_833, true), (1_174_978, false)] {
            x.runs = x.next_probe;
            x.record(false, 1_000_000, true, true);
            assert_eq!((x.ns_parallel_stall, x.probe_every, x.next_probe), (stall, PROBE_EVERY, x.runs + PROBE_EVERY));
            assert_eq!(x.prefers_alone(true), alone);
        }
    }

    /// A shape on a simulated clock: alone its regions take `alone_ns`, in parallel
    /// `parallel_ns`, except that every `stall_every`-th parallel region waits `stall_ns`
    /// for a preempted worker. Stalls are logged as `Pool::run` logs them.
    struct Sim {
        x: RegionTiming,
        log: StallLog,
        now: u64,
        n_parallel: usize,
    }

    impl Sim {
        /// Runs `runs` regions; returns how many ran alone.
        fn run(&mut self, runs: usize, alone_ns: u64, parallel_ns: u64, stall_every: usize, stall_ns: u64) -> usize {
            let mut n_alone = 0;
            for _ in 0..runs {
                let contended = self.log.contended(self.now);
                let (alone, probe) = self.x.next_run(contended);
                let ns = if alone {
                    n_alone += 1;
                    alone_ns
                } else {
                    self.n_parallel += 1;
                    if self.n_parallel.is_multiple_of(stall_every) {
                        stall_ns
                    } else {
                        parallel_ns
                    }
                };
                self.now += ns;
                if !alone && stall_excess(ns, self.x.ns_parallel) > 0 {
                    self.log.log(self.now);
                }
                self.x.record(alone, ns, probe, contended);
            }
            n_alone
        }
    }

    #[test]
    fn frequent_stalls_send_a_shape_alone_while_they_last() {
        let site = std::panic::Location::caller();
        let mut sim = Sim { x: RegionTiming::new(site, 16), log: StallLog::default(), now: 0, n_parallel: 0 };
        // A loaded machine: parallel 50 µs against 90 alone; a 3 ms stall once in 8,000
        // regions (every 0.4 s). Stalls this sparse are not counted: all but the probes
        // run in parallel.
        let alone = sim.run(40_000, 90_000, 50_000, 8_000, 3_000_000);
        assert!(alone < 100, "{alone} of 40,000 alone on a loaded machine");
        // Another process on the worker's core: parallel regions typically take 85 µs
        // (about the time alone), and one in 30 waits 1.5 ms for the preempted worker.
        // The typical time alone would keep the shape parallel (90 is not 20% below 85);
        // with the stalls counted, it runs alone, but for probes and the runs after them.
        let alone = sim.run(20_000, 90_000, 85_000, 30, 1_500_000);
        assert!(alone > 15_000, "only {alone} of 20,000 alone with a busy core");
        assert!(sim.x.ns_parallel < 2 * 85_000, "typical parallel time {} keeps out the stalls", sim.x.ns_parallel);
        // The other process ends: back to parallel within a few probes.
        sim.run(2_000, 90_000, 50_000, usize::MAX, 0);
        let alone = sim.run(2_000, 90_000, 50_000, usize::MAX, 0);
        assert!(alone < 40, "{alone} of 2,000 alone after the busy core came back");
    }

    #[test]
    fn contention_is_three_stalls_within_the_window() {
        let mut log = StallLog::default();
        let ms = 1_000_000;
        assert!(!log.contended(0));
        log.log(10 * ms);
        log.log(20 * ms);
        assert!(!log.contended(30 * ms), "two stalls are not a pattern");
        log.log(300 * ms);
        assert!(log.contended(300 * ms));
        assert!(log.contended(509 * ms));
        assert!(!log.contended(511 * ms), "the oldest of the three has left the window");
        log.log(600 * ms);
        assert!(!log.contended(600 * ms), "20, 300 and 600 ms span more than the window");
        log.log(650 * ms);
        assert!(log.contended(650 * ms), "300, 600 and 650 ms do not");
    }

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

    #[test]
    fn chunks_of_several_slices_cover_each_once() {
        for pool in [Some(Pool::new(2)), None] {
            let (mut a, mut b, mut c) = (vec![0usize; 1001], vec![0usize; 7], vec![0usize; 0]);
            let fill = |a: &mut [usize], b: &mut [usize], c: &mut [usize]| {
                for_each_chunk_mut_n([a, b, c], [100, 3, 5], &|i, k, chunk| {
                    let size = [100, 3, 5][i];
                    for (j, o) in chunk.iter_mut().enumerate() {
                        *o += (i + 1) * 10_000 + k * size + j;
                    }
                })
            };
            match &pool {
                Some(p) => p.install(|| fill(&mut a, &mut b, &mut c)),
                None => fill(&mut a, &mut b, &mut c),
            }
            assert!(a.iter().enumerate().all(|(j, &v)| v == 10_000 + j));
            assert!(b.iter().enumerate().all(|(j, &v)| v == 20_000 + j));
        }
    }

    #[test]
    fn paired_chunks_go_together() {
        for pool in [Some(Pool::new(2)), None] {
            for n in [1usize, 2, 7, 40] {
                let (mut a, mut b) = (vec![0usize; n * 3], vec![0u8; n * 2 + 5]);
                let fill = |a: &mut [usize], b: &mut [u8]| {
                    for_each_chunk_mut2(n, a, 3, b, 2, &|i, ca, cb| {
                        ca.fill(i + 1);
                        cb.fill(i as u8 + 1);
                    })
                };
                match &pool {
                    Some(p) => p.install(|| fill(&mut a, &mut b)),
                    None => fill(&mut a, &mut b),
                }
                assert!(a.iter().enumerate().all(|(k, &v)| v == k / 3 + 1), "n {n}");
                assert!(b[..n * 2].iter().enumerate().all(|(k, &v)| usize::from(v) == k / 2 + 1), "n {n}");
                assert!(b[n * 2..].iter().all(|&v| v == 0), "n {n}");
            }
        }
    }

    #[test]
    fn columns_cover_the_grid_once_in_runs_of_rows() {
        for pool in [Some(Pool::new(2)), None] {
            for (rows, cols, chunk, run) in
                [(32usize, 16usize, 4usize, 32usize), (7, 3, 2, 3), (1, 5, 1, 8), (9, 1, 3, 1)]
            {
                let mut out = vec![0usize; rows * cols * chunk];
                let fill = |out: &mut [usize]| {
                    for_each_column_mut(out, chunk, rows, run, &|col, range, column| {
                        assert!(range.len() <= run && range.start % run == 0);
                        for r in range {
                            for (i, o) in column.row(r).iter_mut().enumerate() {
                                *o += (r * cols + col) * chunk + i + 1;
                            }
                        }
                    })
                };
                match &pool {
                    Some(p) => p.install(|| fill(&mut out)),
                    None => fill(&mut out),
                }
                assert!(out.iter().enumerate().all(|(i, &v)| v == i + 1), "{rows}x{cols} run {run}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "not in this job's rows")]
    fn a_column_hands_out_only_its_own_rows() {
        let mut out = vec![0u8; 8];
        for_each_column_mut(&mut out, 1, 4, 2, &|_, range, column| {
            column.row((range.start + 2) % 4);
        });
    }

    #[test]
    fn chunks_cover_the_slice_once() {
        for pool in [Some(Pool::new(2)), None] {
            for (len, chunk) in [(1000usize, 100usize), (1001, 100), (5, 7), (0, 3)] {
                let mut out = vec![0usize; len];
                let fill = |out: &mut [usize]| {
                    for_each_chunk_mut(out, chunk, &|b, c| {
                        for (i, o) in c.iter_mut().enumerate() {
                            *o += b * chunk + i + 1;
                        }
                    })
                };
                match &pool {
                    Some(p) => p.install(|| fill(&mut out)),
                    None => fill(&mut out),
                }
                assert!(out.iter().enumerate().all(|(i, &v)| v == i + 1), "len {len} chunk {chunk}");
            }
        }
    }
}
