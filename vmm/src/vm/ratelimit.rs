//! Rate-limited warnings for things a guest can trigger at will (an eject of a CPU that
//! is not being removed, an unsupported sleep state, ...): a guest looping on one once
//! wrote 1.06 M warning lines (114 MB) in 10 s.
//!
//! Each kind of warning (`guest_warn!`, one [`RateLimit`] per call site) logs its first
//! [`FIRST_N`] occurrences, then at most one summary line per [`SUMMARY_INTERVAL`] with
//! the count suppressed since the last line. Deciding costs two atomic operations and takes
//! no lock, so a vCPU thread in a device handler never waits for another.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Occurrences of one kind logged in full before suppression starts.
pub const FIRST_N: u64 = 10;
/// At most one summary line per kind in this long.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// What to do with one occurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `last` is true for the FIRST_N-th, after which suppression starts.
    Log {
        /// The last one logged in full.
        last: bool,
    },
    /// Log a summary instead: this many (this one included) were suppressed since the
    /// previous line.
    Summary(u64),
    /// Count it silently.
    Suppress,
}

/// The counters of one kind of warning.
#[derive(Debug)]
pub struct RateLimit {
    seen: AtomicU64,
    /// `seen` when the last line (full or summary) was logged.
    reported: AtomicU64,
    /// 1 + milliseconds since [`epoch`] of the last summary (0: none yet).
    last_summary_ms: AtomicU64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl RateLimit {
    /// No occurrence yet.
    pub const fn new() -> Self {
        RateLimit {
            seen: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            last_summary_ms: AtomicU64::new(0),
        }
    }

    /// Decides about one occurrence now.
    pub fn admit(&self) -> Verdict {
        let now = epoch().elapsed();
        self.admit_at(now)
    }

    /// [`RateLimit::admit`] at `now` (time since an arbitrary fixed origin; tests).
    pub fn admit_at(&self, now: Duration) -> Verdict {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= FIRST_N {
            self.reported.store(n, Ordering::Relaxed);
            return Verdict::Log { last: n == FIRST_N };
        }
        // Stored plus one so that "no summary yet" (0) differs from a summary at time 0.
        let now_ms = (now.as_millis() as u64).saturating_add(1);
        let last = self.last_summary_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= SUMMARY_INTERVAL.as_millis() as u64;
        if due
            && self
                .last_summary_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let before = self.reported.swap(n, Ordering::Relaxed);
            return Verdict::Summary(n - before);
        }
        Verdict::Suppress
    }

    /// Occurrences so far.
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }
}

/// `log::warn!` for guest-triggered events, rate-limited per call site (see the module
/// docs): `guest_warn!("kind", "format", args...)`.
#[macro_export]
macro_rules! guest_warn {
    ($kind:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::vm::ratelimit::RateLimit = $crate::vm::ratelimit::RateLimit::new();
        match LIMIT.admit() {
            $crate::vm::ratelimit::Verdict::Log { last: false } => log::warn!($($arg)+),
            $crate::vm::ratelimit::Verdict::Log { last: true } => log::warn!(
                "{} (further '{}' warnings are counted and summarised every {} s)",
                format_args!($($arg)+),
                $kind,
                $crate::vm::ratelimit::SUMMARY_INTERVAL.as_secs()
            ),
            $crate::vm::ratelimit::Verdict::Summary(n) => log::warn!(
                "{n} more '{}' warning(s) suppressed (latest: {})",
                $kind,
                format_args!($($arg)+)
            ),
            $crate::vm::ratelimit::Verdict::Suppress => {}
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_n_then_one_summary_per_interval() {
        let l = RateLimit::new();
        let t = |s: u64| Duration::from_secs(s);
        for i in 1..=FIRST_N {
            assert_eq!(l.admit_at(t(0)), Verdict::Log { last: i == FIRST_N });
        }
        // The first suppressed one reports at once (1 suppressed), then silence.
        assert_eq!(l.admit_at(t(0)), Verdict::Summary(1));
        for _ in 0..1000 {
            assert_eq!(l.admit_at(t(5)), Verdict::Suppress);
        }
        // An interval later: one summary covering everything since.
        assert_eq!(l.admit_at(t(10)), Verdict::Summary(1001));
        assert_eq!(l.admit_at(t(10)), Verdict::Suppress);
        assert_eq!(l.admit_at(t(25)), Verdict::Summary(2));
        assert_eq!(l.seen(), FIRST_N + 1 + 1000 + 1 + 1 + 1);
    }
}
