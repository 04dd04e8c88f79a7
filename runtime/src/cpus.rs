//! The default thread count: the physical cores this process may run on.
//!
//! Two hardware threads of one core (SMT siblings) share its load ports, caches and
//! prefetchers, so a second thread per core adds little to decoding, which streams the
//! weights from memory, and its fork-joins cost the same as a real core's (llama.cpp
//! defaults to physical cores for the same reason). On Linux the count comes from the
//! process's allowed CPUs (`/proc/self/status`) and each CPU's siblings in sysfs; where
//! either is missing, it falls back to [`std::thread::available_parallelism`].

use std::collections::BTreeSet;
use std::path::Path;

/// Physical cores among the CPUs this process may use, at most the logical CPUs
/// `available_parallelism` grants (which also counts a cgroup's CPU quota); at least 1.
pub fn default_threads() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    physical_cores(Path::new("/")).map_or(logical, |p| p.min(logical)).max(1)
}

/// Distinct cores (sets of sibling hardware threads) among the allowed CPUs, read under
/// `root` (`/` for this machine); `None` where the files are missing or unreadable.
fn physical_cores(root: &Path) -> Option<usize> {
    let status = std::fs::read_to_string(root.join("proc/self/status")).ok()?;
    let allowed = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    let mut cores = BTreeSet::new();
    for cpu in parse_cpu_list(allowed.trim())? {
        let topology = root.join(format!("sys/devices/system/cpu/cpu{cpu}/topology"));
        // `core_cpus_list` is the newer name of `thread_siblings_list`; kernels have both or one.
        let siblings = ["core_cpus_list", "thread_siblings_list"]
            .iter()
            .find_map(|f| std::fs::read_to_string(topology.join(f)).ok())?;
        cores.insert(parse_cpu_list(siblings.trim())?);
    }
    (!cores.is_empty()).then_some(cores.len())
}

/// The CPUs of a kernel CPU list such as `0-3,8,10-11`; `None` if it is malformed or names
/// absurdly many CPUs.
fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    const MAX_CPUS: usize = 1 << 16;
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (lo, hi): (usize, usize) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse().ok()?, hi.parse().ok()?),
            None => {
                let cpu = part.parse().ok()?;
                (cpu, cpu)
            }
        };
        if lo > hi || hi >= MAX_CPUS {
            return None;
        }
        cpus.extend(lo..=hi);
    }
    (!cpus.is_empty()).then_some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("0-x"), None);
        assert_eq!(parse_cpu_list("0-99999999"), None);
    }

    /// A fake `/` with `cpus` allowed and each CPU's sibling list.
    fn fake_root(allowed: &str, siblings: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc/self")).unwrap();
        let status = format!("Name:\ttern\nCpus_allowed:\tf\nCpus_allowed_list:\t{allowed}\nMems_allowed:\t1\n");
        std::fs::write(root.path().join("proc/self/status"), status).unwrap();
        for (cpu, s) in siblings.iter().enumerate() {
            let dir = root.path().join(format!("sys/devices/system/cpu/cpu{cpu}/topology"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("thread_siblings_list"), format!("{s}\n")).unwrap();
        }
        root
    }

    #[test]
    fn smt_siblings_count_as_one_core() {
        // Two cores with two threads each; Linux numbers the siblings 0,2 and 1,3.
        let siblings = ["0,2", "1,3", "0,2", "1,3"];
        assert_eq!(physical_cores(fake_root("0-3", &siblings).path()), Some(2));
        assert_eq!(physical_cores(fake_root("0,2", &siblings).path()), Some(1));
        assert_eq!(physical_cores(fake_root("0-1", &siblings).path()), Some(2));
        // No SMT: every CPU is its own core.
        assert_eq!(physical_cores(fake_root("0-3", &["0", "1", "2", "3"]).path()), Some(4));
        // An allowed CPU without topology: unknown, not a guess.
        assert_eq!(physical_cores(fake_root("0-4", &siblings).path()), None);
        assert_eq!(physical_cores(Path::new("/no/such/root")), None);
    }
}
