//! Memory back after load: when connections (client, and upstream ones
//! pooled for them) close in numbers, the allocator's free pages go back to
//! the OS.
//!
//! Each open connection holds hyper's fixed buffers (about 23 kB with its
//! request in flight), and each pooled upstream connection about 9 kB (its
//! read buffer). When a burst of connections ends, that memory is free, but
//! glibc keeps its pages mapped, so without this the process stays at the
//! burst's peak RSS. The trim itself is in the `scopegate-heap` crate (the
//! project's one unsafe call); this module decides when it runs.

use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// How often the open-connection count is looked at.
const EVERY: Duration = Duration::from_millis(250);

/// Fewer connections closing than this does not free enough to be worth a
/// walk over the heap.
const MIN_CLOSED: usize = 64;

/// Decides, from the open-connection count (client and upstream) sampled
/// every `EVERY`, when the heap is trimmed.
#[derive(Debug, Default)]
pub struct AfterLoad {
    /// The most connections open since the last trim.
    peak: usize,
}

impl AfterLoad {
    /// Records the open count; true when the heap should be trimmed now:
    /// at least `MIN_CLOSED` connections have closed since the peak, and
    /// no more than half of the peak are still open.
    pub fn observe(&mut self, open: usize) -> bool {
        self.peak = self.peak.max(open);
        let trim = self.peak - open >= MIN_CLOSED && open <= self.peak / 2;
        if trim {
            self.peak = open;
        }
        trim
    }
}

/// Trims the heap whenever [`AfterLoad`] says so, until `open` returns
/// `None` (the listener is gone).
pub async fn release_after_load(
    metrics: std::sync::Arc<Metrics>,
    open: impl Fn() -> Option<usize>,
) {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut policy = AfterLoad::default();
    loop {
        ticks.tick().await;
        let Some(open) = open() else {
            return;
        };
        if policy.observe(open) {
            let started = Instant::now();
            // It locks each arena while it walks it: off the runtime's threads.
            let released = tokio::task::spawn_blocking(scopegate_heap::release_free_pages)
                .await
                .unwrap_or(false);
            metrics.heap_released(released);
            tracing::debug!(open, released, took = ?started.elapsed(), "returned free heap pages to the OS");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_when_a_burst_ends() {
        let mut policy = AfterLoad::default();
        let samples = [0, 10, 1000, 1000, 990, 600, 480, 470, 100, 0, 0];
        let trims: Vec<usize> = samples
            .iter()
            .filter(|&&open| policy.observe(open))
            .copied()
            .collect();
        // 480 is at most half of 1000; the peak then starts again from 480,
        // so the wind-down to 100 and to 0 trims again, and then nothing.
        assert_eq!(trims, [480, 100, 0]);
    }

    #[test]
    fn small_drops_and_steady_load_never_trim() {
        let mut policy = AfterLoad::default();
        for open in [40, 0, 63, 0, 63, 1, 500, 499, 500, 450, 300] {
            assert!(!policy.observe(open), "trimmed at {open}");
        }
        assert!(policy.observe(200), "500 -> 200 should trim");
    }
}
