//! The commit budget: how often a guest can make efivmm rewrite the vars
//! file (audit finding F4).
//!
//! Every call that changes the store is committed (temp file, fsync,
//! rename, directory fsync) before it returns; that guarantee stays. What is
//! bounded is the rate: a token bucket of [`BURST`] commits refilled at
//! [`RATE_PER_SEC`] per second. A call that finds the bucket empty waits
//! for the next token before it commits, so a guest in a SetVariable loop
//! gets at most `RATE_PER_SEC` acknowledged writes a second and the host
//! writes at most `RATE_PER_SEC` x the store size (128 KiB or 528 KiB) a
//! second, while a boot's burst of writes (efibootmgr, systemd) never waits.
//! The monotonic count does not spend the budget one call at a time: the
//! built-in backend reserves values in blocks (`builtin.rs`).

use std::time::{Duration, Instant};

/// Commits that may happen back to back.
pub const BURST: f64 = 200.0;
/// Sustained commits per second.
pub const RATE_PER_SEC: f64 = 20.0;

/// A token bucket of commits.
#[derive(Debug)]
pub struct CommitBudget {
    tokens: f64,
    at: Instant,
}

impl CommitBudget {
    /// A full bucket at `now`.
    pub fn new(now: Instant) -> Self {
        CommitBudget { tokens: BURST, at: now }
    }

    /// Takes one commit at `now`; returns how long the caller must wait
    /// before it may commit (zero if a token was there).
    pub fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * RATE_PER_SEC).min(BURST);
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            // The debt is paid by the refill; the next caller sees it.
            Duration::from_secs_f64(-self.tokens / RATE_PER_SEC)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_commits_at_once_and_a_storm_is_held_to_the_rate() {
        let t0 = Instant::now();
        let mut b = CommitBudget::new(t0);
        for _ in 0..BURST as u32 {
            assert_eq!(b.take(t0), Duration::ZERO);
        }
        // The storm goes on at the same instant: each call waits one more
        // refill period than the last.
        let period = Duration::from_secs_f64(1.0 / RATE_PER_SEC);
        let mut waits = Vec::new();
        for _ in 0..5 {
            waits.push(b.take(t0));
        }
        for (i, w) in waits.iter().enumerate() {
            let want = period * (i as u32 + 1);
            assert!(w.abs_diff(want) < Duration::from_micros(10), "wait {i}: {w:?}, want {want:?}");
        }
        // A caller that waited as told finds its token: one second of
        // storm, after the debt, is RATE_PER_SEC commits.
        let mut now = t0 + waits[4];
        let mut commits = 0;
        while now < t0 + waits[4] + Duration::from_secs(1) {
            let w = b.take(now);
            now += w.max(Duration::from_micros(1));
            commits += 1;
        }
        assert!((commits as f64 - RATE_PER_SEC).abs() <= 1.0, "{commits} commits in a second of storm");
        // Idle time refills the bucket up to the burst, not beyond.
        let later = now + Duration::from_secs(3600);
        for _ in 0..BURST as u32 {
            assert_eq!(b.take(later), Duration::ZERO);
        }
        assert!(b.take(later) > Duration::ZERO);
    }
}
