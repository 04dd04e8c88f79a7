//! Signals that end a conversion end it cleanly: SIGINT, SIGTERM or SIGHUP removes the
//! unfinished temp file, prints one line and exits with 128 + the signal's number (130, 143,
//! 129), leaving the output path as it was.

use crate::output::{abandon, Unfinished};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGXFSZ};
use signal_hook::iterator::Signals;
use std::io::IsTerminal;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Installs the handlers (for the `tern-convert` binary; a library caller keeps its own).
pub fn install() -> std::io::Result<()> {
    // Past a file-size limit (RLIMIT_FSIZE) a write raises SIGXFSZ, whose default action
    // kills the process and leaves the temp file. With a handler installed (this one only
    // sets a flag nobody reads) the write fails with EFBIG instead, and the conversion
    // reports it and cleans up as after any failed write.
    signal_hook::flag::register(SIGXFSZ, Arc::new(AtomicBool::new(false)))?;
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        if let Some(signal) = signals.forever().next() {
            abandon(128 + signal, |unfinished| report(signal, unfinished));
        }
    })?;
    Ok(())
}

fn report(signal: i32, unfinished: &[Unfinished]) {
    let name = match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "SIGHUP",
    };
    // The progress bar, drawn on a terminal, is left unfinished: start a line of our own.
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    match unfinished {
        [] => eprintln!("tern-convert: stopped by {name}"),
        [u, ..] => eprintln!(
            "tern-convert: stopped by {name}; removed the unfinished {}; {} is untouched",
            u.temp.display(),
            u.output.display()
        ),
    }
}
