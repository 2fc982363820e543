//! The retry budget, as Linkerd's: retries may add at most `ratio` of the
//! requests of the last `window`, plus `min_per_second` whatever the traffic, so
//! a failing backend sees at most a bounded extra load instead of a retry storm.
//! Counts are kept per second of the window; time is passed in.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    pub ratio: f64,
    pub min_per_second: u32,
    pub window: Duration,
}

impl Default for BudgetConfig {
    /// Linkerd's defaults: 20% of requests plus 10 per second, over 10 s.
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// One second of the window: its start, requests and retries.
#[derive(Clone, Copy, Debug)]
struct Second {
    start: Instant,
    requests: u32,
    retries: u32,
}

#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    seconds: Mutex<VecDeque<Second>>,
}

impl RetryBudget {
    pub fn new(config: BudgetConfig) -> Self {
        Self {
            config,
            seconds: Mutex::default(),
        }
    }

    /// Counts a request (not a retry).
    pub fn request(&self, now: Instant) {
        self.update(now, |second| second.requests += 1);
    }

    /// Takes a retry from the budget; false when it is spent.
    pub fn try_retry(&self, now: Instant) -> bool {
        let mut seconds = self.lock();
        current(&mut seconds, now, self.config.window);
        let (requests, retries) = seconds.iter().fold((0u64, 0u64), |(q, r), s| {
            (q + u64::from(s.requests), r + u64::from(s.retries))
        });
        let allowed = self.config.ratio * requests as f64
            + f64::from(self.config.min_per_second) * self.config.window.as_secs_f64();
        if (retries as f64) < allowed {
            if let Some(second) = seconds.back_mut() {
                second.retries += 1;
            }
            true
        } else {
            false
        }
    }

    fn update(&self, now: Instant, change: impl FnOnce(&mut Second)) {
        let mut seconds = self.lock();
        change(current(&mut seconds, now, self.config.window));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Second>> {
        // Counters only: a panicked holder leaves nothing half-done worth refusing.
        self.seconds.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Drops the seconds that left the window and returns the one `now` is in.
fn current(seconds: &mut VecDeque<Second>, now: Instant, window: Duration) -> &mut Second {
    while seconds
        .front()
        .is_some_and(|s| now.saturating_duration_since(s.start) >= window)
    {
        seconds.pop_front();
    }
    let starts_new = seconds
        .back()
        .is_none_or(|s| now.saturating_duration_since(s.start) >= Duration::from_secs(1));
    if starts_new {
        seconds.push_back(Second {
            start: now,
            requests: 0,
            retries: 0,
        });
    }
    // Just ensured there is one.
    seconds.back_mut().expect("the current second")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_ratio_plus_floor_and_recover() {
        let budget = RetryBudget::new(BudgetConfig {
            ratio: 0.2,
            min_per_second: 1,
            window: Duration::from_secs(10),
        });
        let start = Instant::now();
        for _ in 0..100 {
            budget.request(start);
        }
        // 20% of 100 plus 1/s over 10 s: 30 retries, not one more.
        let granted = (0..100).filter(|_| budget.try_retry(start)).count();
        assert_eq!(granted, 30);
        // Still spent nine seconds on, with no new requests.
        assert!(!budget.try_retry(start + Duration::from_secs(9)));
        // Once the window has passed, only the floor is left.
        let later = start + Duration::from_secs(10);
        let granted = (0..100).filter(|_| budget.try_retry(later)).count();
        assert_eq!(granted, 10);
    }
}
