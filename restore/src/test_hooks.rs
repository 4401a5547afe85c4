//! Fault injection for crash tests: `WSR_TEST_ABORT_AT=<point>` makes the process abort (as a
//! SIGKILL would) at that point. Points: `after-entries:<N>` (mid-unpack),
//! `before-marker-rename` (the marker written, not yet named `complete`), `after-marker` (tree
//! complete, nothing moved yet), `after-removing-identity` and `after-removing-complete`
//! (everything moved, the staging directory being cleaned up). The variable is read once per
//! process; unset (as in production), the per-entry path has no hook at all (see
//! `abort_after_entries`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static ENTRIES: AtomicU64 = AtomicU64::new(0);

fn wanted() -> Option<&'static str> {
    static WANTED: OnceLock<Option<String>> = OnceLock::new();
    WANTED
        .get_or_init(|| std::env::var("WSR_TEST_ABORT_AT").ok())
        .as_deref()
}

/// Aborts the process when the hook names `point`.
pub fn maybe_abort(point: &str) {
    if wanted() == Some(point) {
        eprintln!("wsr-restore: test hook: aborting at {point}");
        std::process::abort();
    }
}

/// `N` when the hook is `after-entries:N`: the caller then calls [`entry_unpacked`] once per
/// entry (and only then).
pub fn abort_after_entries() -> Option<u64> {
    wanted()?.strip_prefix("after-entries:")?.parse().ok()
}

/// Counts one unpacked entry and aborts the process once `limit` have been unpacked.
pub fn entry_unpacked(limit: u64) {
    let total = ENTRIES.fetch_add(1, Ordering::Relaxed) + 1;
    if total >= limit {
        eprintln!("wsr-restore: test hook: aborting after {total} entries");
        std::process::abort();
    }
}
