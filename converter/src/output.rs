//! The output `.tern` file, written whole or not at all.
//!
//! A conversion writes a temp file of its own, created exclusively in the output's folder
//! (`NAME.XXXXXX.partial`: the same filesystem, so the final rename is atomic, and a name no
//! other conversion can share), syncs it, renames it over the output path, then syncs the
//! folder so that the rename itself survives a crash. A failed conversion removes its temp
//! file; so does a signal that ends the process ([`abandon`], called by `interrupt`). Only
//! SIGKILL or a crash of the machine can leave one behind, and the output path then still
//! holds what it held before.

use anyhow::{Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use tempfile::TempPath;

/// One conversion in progress: its temp file and the output it will become.
pub(crate) struct Unfinished {
    pub temp: PathBuf,
    pub output: PathBuf,
}

/// Every temp file of this process not yet renamed or removed. A signal handler takes the
/// lock, removes them and exits while holding it, so no rename can slip in between.
static UNFINISHED: Mutex<Vec<Unfinished>> = Mutex::new(Vec::new());

fn unfinished() -> MutexGuard<'static, Vec<Unfinished>> {
    // A panic while the lock was held cannot leave the list half-updated (push/retain).
    UNFINISHED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The temp file of a conversion to `output`; removed when dropped unless committed.
pub(crate) struct AtomicOutput {
    temp: Option<TempPath>,
    output: PathBuf,
}

impl AtomicOutput {
    /// Creates the temp file beside `output` and returns it with its open file.
    pub fn create(output: &Path) -> Result<(Self, File)> {
        let dir = folder_of(output);
        // Registered under the lock before a signal could find the file unlisted.
        let mut list = unfinished();
        let mut prefix = output.file_name().unwrap_or_default().to_os_string();
        prefix.push(".");
        // The mode a plain `File::create` would give (0o666 less the umask), not
        // tempfile's private 0o600: the .tern file is meant to be shared like any other.
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o666);
        let file = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".partial")
            .permissions(mode)
            .tempfile_in(dir)
            .with_context(|| {
                format!("{}: cannot create a temp file in {} to write it", output.display(), dir.display())
            })?;
        let (file, temp) = file.into_parts();
        list.push(Unfinished { temp: temp.to_path_buf(), output: output.to_path_buf() });
        Ok((AtomicOutput { temp: Some(temp), output: output.to_path_buf() }, file))
    }

    /// The temp file's path.
    pub fn temp_path(&self) -> &Path {
        self.temp.as_deref().expect("present until commit or drop")
    }

    /// Syncs `file` (the temp file, fully written), renames it over the output and syncs
    /// the folder. On an error the temp file is removed and the output left as it was.
    pub fn commit(mut self, file: File) -> Result<()> {
        let temp = self.temp.take().expect("present until commit or drop");
        let synced = file.sync_all();
        drop(file);
        let mut list = unfinished();
        list.retain(|u| u.temp != *temp);
        synced.with_context(|| format!("writing {}: syncing {}", self.output.display(), temp.display()))?;
        let shown = temp.to_path_buf();
        // A failed rename hands back the TempPath, whose drop removes the temp file.
        temp.persist(&self.output)
            .map_err(|e| e.error)
            .with_context(|| format!("renaming {} to {}", shown.display(), self.output.display()))?;
        drop(list);
        sync_folder(folder_of(&self.output))
            .with_context(|| format!("{}: written, but syncing its folder failed", self.output.display()))
    }
}

impl Drop for AtomicOutput {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let mut list = unfinished();
            list.retain(|u| u.temp != *temp);
            drop(temp); // removes the file
        }
    }
}

/// Removes every unfinished temp file of this process, passes their list to `report`,
/// and exits with `code`, holding the lock throughout so that no conversion can rename its
/// temp file meanwhile.
pub(crate) fn abandon(code: i32, report: impl FnOnce(&[Unfinished])) -> ! {
    let list = unfinished();
    for u in list.iter() {
        let _ = std::fs::remove_file(&u.temp);
    }
    report(&list);
    std::process::exit(code)
}

/// The temp files a conversion to `output` may be writing (or, after SIGKILL, left):
/// `NAME.XXXXXX.partial` in the output's folder.
pub fn temp_files(output: &Path) -> Vec<PathBuf> {
    let mut prefix = output.file_name().unwrap_or_default().to_string_lossy().into_owned();
    prefix.push('.');
    let Ok(entries) = std::fs::read_dir(folder_of(output)) else { return vec![] };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&prefix) && name.ends_with(".partial")
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// The folder `path` is in (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Makes the folder's entries (a rename into it) durable.
fn sync_folder(dir: &Path) -> Result<()> {
    let d = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    match d.sync_all() {
        // Some filesystems cannot sync a folder; their renames are as durable as they get.
        Err(e) if matches!(e.kind(), std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported) => Ok(()),
        r => r.with_context(|| format!("syncing {}", dir.display())),
    }
}
