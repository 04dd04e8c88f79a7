//! How long each region shape takes alone and in parallel, and the choice that follows:
//! run alone while that is clearly faster (another process holds a core), with the cost
//! of stalls (a worker preempted mid-band) counted while they come often.

use super::Site;

/// When the last [`STALLS_CONTENDED`] stalls happened (ns since the pool started), oldest
/// first.
#[derive(Default)]
pub(super) struct StallLog([Option<u64>; STALLS_CONTENDED]);

impl StallLog {
    pub(super) fn log(&mut self, now: u64) {
        self.0.rotate_left(1);
        self.0[STALLS_CONTENDED - 1] = Some(now);
    }

    /// Whether stalls come often enough to be another process on a worker's core rather
    /// than a moment's preemption: the last [`STALLS_CONTENDED`] within [`CONTENDED_WINDOW_NS`].
    pub(super) fn contended(&self, now: u64) -> bool {
        self.0[0].is_some_and(|t| now.saturating_sub(t) < CONTENDED_WINDOW_NS)
    }
}

/// Timing of one region shape (where in the code it starts, and its band count): regions
/// run, moving averages of ns with and without workers.
#[derive(Clone, Copy)]
pub(super) struct RegionTiming {
    pub(super) site: Site,
    pub(super) n_bands: usize,
    runs: u64,
    /// The run at which the mode not chosen is timed next, and the interval after that.
    next_probe: u64,
    probe_every: u64,
    pub(super) ns_parallel: u64,
    pub(super) ns_alone: u64,
    /// Moving averages of what runs took beyond twice their typical time (`ns_parallel`,
    /// `ns_alone`) and [`STALL_MIN`], which those leave out by design: in parallel, mostly
    /// the cost of a worker preempted while it holds a band (the caller waits for it).
    ns_parallel_stall: u64,
    ns_alone_stall: u64,
}

impl RegionTiming {
    /// A shape not run yet: its first run probes (alone), its second runs in parallel.
    pub(super) fn new(site: Site, n_bands: usize) -> Self {
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
    pub(super) fn next_run(&mut self, contended: bool) -> (bool, bool) {
        self.runs += 1;
        let probe = self.runs == self.next_probe;
        (self.prefers_alone(contended) != probe, probe)
    }

    /// Adds the time of a region run alone or in parallel; after a probe (a run of the
    /// mode not chosen), schedules the next one: later if the probe's own time confirms
    /// the choice, soon if it does not (the averages take a few probes to follow). A run
    /// that changes the choice brings the next probe forward too.
    pub(super) fn record(&mut self, alone: bool, ns: u64, probe: bool, contended: bool) {
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
pub(super) fn stall_excess(ns: u64, typical: u64) -> u64 {
    if typical == 0 {
        0
    } else {
        ns.saturating_sub(2 * typical + STALL_MIN)
    }
}

/// Stalls count in the choice only while [`STALLS_CONTENDED`] of them came within
/// [`CONTENDED_WINDOW_NS`]. With another process on a worker's core they come every few dozen
/// parallel regions; on a merely loaded machine a few per second, and reacting to each of
/// those (a shape alone for hundreds of regions after one) slowed decoding (BENCHMARKS.md).
const STALLS_CONTENDED: usize = 3;
const CONTENDED_WINDOW_NS: u64 = 500_000_000;

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
}
