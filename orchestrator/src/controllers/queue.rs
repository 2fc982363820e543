//! The work queue of one controller: which keys are due for a reconcile and when.
//! A key is in the queue at most once (adding it again keeps the earlier due time),
//! and a key whose reconcile failed comes back after an exponential back-off,
//! capped, reset by the next success. Plain data; the runner supplies the clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The first retry's delay; each further failure doubles it.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest wait between retries.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct WorkQueue<K> {
    due: HashMap<K, Instant>,
    failures: HashMap<K, u32>,
}

impl<K> Default for WorkQueue<K> {
    fn default() -> Self {
        Self {
            due: HashMap::new(),
            failures: HashMap::new(),
        }
    }
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    /// Makes `key` due at `at`, or earlier if it already is.
    pub fn add(&mut self, key: K, at: Instant) {
        self.due
            .entry(key)
            .and_modify(|due| *due = (*due).min(at))
            .or_insert(at);
    }

    /// When the next key is due (None: the queue is empty).
    pub fn next_due(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    /// Takes a key due at `now`, the one due the longest.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        // A linear scan: the queue holds the keys that changed since the last pass,
        // few compared with the objects.
        let key = self
            .due
            .iter()
            .filter(|(_, due)| **due <= now)
            .min_by_key(|(_, due)| **due)
            .map(|(key, _)| key.clone())?;
        self.due.remove(&key);
        Some(key)
    }

    /// Records a failed reconcile of `key` and queues its retry; returns the delay.
    pub fn failed(&mut self, key: K, now: Instant) -> Duration {
        let failures = self.failures.entry(key.clone()).or_insert(0);
        *failures = failures.saturating_add(1);
        let delay = backoff(*failures);
        self.add(key, now + delay);
        delay
    }

    /// Records a successful reconcile of `key`: its back-off starts over.
    pub fn succeeded(&mut self, key: &K) {
        self.failures.remove(key);
    }

    pub fn len(&self) -> usize {
        self.due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

/// The delay after the `failures`-th failure in a row: 100 ms doubling, capped.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    BACKOFF_BASE
        .saturating_mul(1u32 << doublings)
        .min(BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_queued_once_at_its_earliest_time() {
        let start = Instant::now();
        let mut queue = WorkQueue::default();
        queue.add("a", start + Duration::from_secs(5));
        queue.add("a", start + Duration::from_secs(1));
        queue.add("a", start + Duration::from_secs(9));
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.next_due(), Some(start + Duration::from_secs(1)));
        assert_eq!(queue.pop_due(start), None, "not due yet");
        assert_eq!(queue.pop_due(start + Duration::from_secs(1)), Some("a"));
        assert!(queue.is_empty());
    }

    #[test]
    fn the_longest_due_key_comes_first() {
        let start = Instant::now();
        let mut queue = WorkQueue::default();
        queue.add("late", start + Duration::from_secs(2));
        queue.add("early", start);
        let later = start + Duration::from_secs(3);
        assert_eq!(queue.pop_due(later), Some("early"));
        assert_eq!(queue.pop_due(later), Some("late"));
        assert_eq!(queue.pop_due(later), None);
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap_and_reset_on_success() {
        let now = Instant::now();
        let mut queue = WorkQueue::default();
        let delays: Vec<Duration> = (0..12)
            .map(|_| {
                let delay = queue.failed("k", now);
                queue.pop_due(now + BACKOFF_CAP);
                delay
            })
            .collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[4], Duration::from_millis(1600));
        assert_eq!(delays[11], BACKOFF_CAP);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        queue.succeeded(&"k");
        assert_eq!(queue.failed("k", now), BACKOFF_BASE);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }
}
