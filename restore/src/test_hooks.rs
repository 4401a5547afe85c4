//! Fault injection for crash tests: `WSR_TEST_ABORT_AT=<point>` makes the process abort (as a
//! SIGKILL would) at that point. Points: `after-entries:<N>` (mid-unpack) and `after-marker`
//! (tree complete, nothing moved yet). Unset in production: one environment lookup per check.

use std::sync::atomic::{AtomicU64, Ordering};

static ENTRIES: AtomicU64 = AtomicU64::new(0);

fn wanted() -> Option<String> {
    std::env::var("WSR_TEST_ABORT_AT").ok()
}

pub fn maybe_abort(point: &str) {
    if wanted().as_deref() == Some(point) {
        eprintln!("wsr-restore: test hook: aborting at {point}");
        std::process::abort();
    }
}

/// Called once per unpacked layer chunk of entries.
pub fn count_entries(n: u64) {
    let total = ENTRIES.fetch_add(n, Ordering::Relaxed) + n;
    if let Some(limit) = wanted().and_then(|w| {
        w.strip_prefix("after-entries:")
            .and_then(|n| n.parse::<u64>().ok())
    }) && total >= limit
    {
        eprintln!("wsr-restore: test hook: aborting after {total} entries");
        std::process::abort();
    }
}
