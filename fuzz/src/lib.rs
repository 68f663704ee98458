//! Shared pieces of the dme fuzz targets: a panic hook that tells panics dme catches by design
//! (symphonia's, turned into `AudioError::Corrupt` by `dme_audio`) from panics that escape.
//!
//! libFuzzer's Rust glue installs a hook that aborts on *every* panic, caught or not. dme_audio
//! promises "never panics" by catching symphonia's panics, so the targets replace that hook:
//! - by default a caught panic is tolerated and reported once per source location on stderr;
//!   a panic that escapes the target body aborts (a crash for libFuzzer), with its message;
//! - with `DME_FUZZ_STRICT=1` every panic aborts, caught or not, to hunt the panics dme catches.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock};

static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);
static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();

/// Replaces libFuzzer's abort-on-any-panic hook (call from `fuzz_target!`'s `init`).
pub fn install_panic_hook() {
    let strict = std::env::var_os("DME_FUZZ_STRICT").is_some_and(|v| v != "0");
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if strict {
            default_hook(info);
            std::process::abort();
        }
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(format!("{location}: {message}"));
        let seen = SEEN.get_or_init(Mutex::default);
        if seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(location.clone())
        {
            // The first frame outside the standard library says whose code it was.
            let backtrace = std::backtrace::Backtrace::force_capture().to_string();
            let caller = backtrace
                .lines()
                .map(str::trim)
                .find(|l| {
                    l.starts_with("at ")
                        && !l.contains("/rustc/")
                        && !l.contains("fuzz/src/lib.rs")
                        && !l.contains("./src/lib.rs")
                })
                .unwrap_or("")
                .to_owned();
            eprintln!(
                "dme-fuzz: panic (caught unless reported as a crash) at {location}: {message} \
                 (called {caller})"
            );
        }
    }));
}

/// Runs one input; a panic that escapes `body` aborts with its message (a libFuzzer crash).
pub fn run(body: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(body)).is_err() {
        let last = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
        eprintln!(
            "dme-fuzz: a panic escaped: {}",
            last.unwrap_or_else(|| "(unknown)".into())
        );
        std::process::abort();
    }
}
