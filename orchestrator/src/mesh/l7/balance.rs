//! Choosing where a request goes: a backend Service by weight (traffic
//! splitting), then one of its endpoints at random among those outlier
//! detection has not ejected.
//!
//! Outlier detection as Envoy's consecutive-5xx detector (which Istio's
//! DestinationRule configures): an endpoint answering `consecutive_failures` 5xx
//! (or failing to connect) in a row is ejected for a back-off, 30 s doubled at
//! each re-ejection up to 5 min; ejection never takes a Service's last available
//! endpoint. Time is passed in, so tests drive it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::routes::WeightedBackend;

/// The backend that `roll` (uniform in 0..total weight) lands on; None when all
/// weights are 0.
pub fn pick_weighted(backends: &[WeightedBackend], roll: u64) -> Option<&WeightedBackend> {
    let mut left = roll;
    backends.iter().find(|backend| {
        let weight = u64::from(backend.weight);
        if left < weight {
            true
        } else {
            left -= weight;
            false
        }
    })
}

/// The sum of the weights, the range of [`pick_weighted`]'s roll.
pub fn total_weight(backends: &[WeightedBackend]) -> u64 {
    backends.iter().map(|b| u64::from(b.weight)).sum()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

impl Default for OutlierConfig {
    /// Envoy's defaults: 5 consecutive 5xx, 30 s, at most 300 s.
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Health {
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    /// How often the endpoint was ejected: each ejection lasts twice the last.
    ejections: u32,
}

/// Per-endpoint failure counts and ejections.
#[derive(Debug, Default)]
pub struct Outliers {
    config: OutlierConfig,
    endpoints: Mutex<HashMap<SocketAddr, Health>>,
}

impl Outliers {
    pub fn new(config: OutlierConfig) -> Self {
        Self {
            config,
            endpoints: Mutex::default(),
        }
    }

    /// The endpoints of `pool` not ejected at `now`.
    pub fn available(&self, pool: &[SocketAddr], now: Instant) -> Vec<SocketAddr> {
        let endpoints = self.lock();
        pool.iter()
            .copied()
            .filter(|addr| !is_ejected(endpoints.get(addr), now))
            .collect()
    }

    /// Records an answer from `addr`, one of `pool`: a failure is a 5xx or no
    /// connection. Returns whether it ejected the endpoint.
    pub fn record(
        &self,
        addr: SocketAddr,
        failed: bool,
        pool: &[SocketAddr],
        now: Instant,
    ) -> bool {
        let mut endpoints = self.lock();
        let others_available = pool
            .iter()
            .filter(|other| **other != addr)
            .any(|other| !is_ejected(endpoints.get(other), now));
        let health = endpoints.entry(addr).or_default();
        if !failed {
            health.consecutive_failures = 0;
            return false;
        }
        health.consecutive_failures += 1;
        if health.consecutive_failures < self.config.consecutive_failures
            || is_ejected(Some(health), now)
            || !others_available
        {
            return false;
        }
        let factor = 1u32.checked_shl(health.ejections).unwrap_or(u32::MAX);
        let back_off = self
            .config
            .base_ejection
            .saturating_mul(factor)
            .min(self.config.max_ejection);
        health.ejections += 1;
        health.consecutive_failures = 0;
        health.ejected_until = Some(now + back_off);
        true
    }

    /// Forgets the endpoints not in `current` (they left their Services).
    pub fn keep_only(&self, current: &HashSet<SocketAddr>) {
        self.lock().retain(|addr, _| current.contains(addr));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Health>> {
        // The map stays consistent even if a holder panicked: every update is one
        // assignment of plain values.
        self.endpoints.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn is_ejected(health: Option<&Health>, now: Instant) -> bool {
    health
        .and_then(|h| h.ejected_until)
        .is_some_and(|until| now < until)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::mesh::l7::routes::ServicePort;

    fn backend(name: &str, weight: u32) -> WeightedBackend {
        WeightedBackend {
            service: ServicePort {
                namespace: "shop".into(),
                name: name.into(),
                port: 80,
            },
            weight,
        }
    }

    #[test]
    fn a_90_10_split_holds_over_2000_picks() {
        let backends = [backend("v1", 90), backend("v2", 10), backend("off", 0)];
        let total = total_weight(&backends);
        let mut rng = StdRng::seed_from_u64(7);
        let mut v2 = 0;
        for _ in 0..2_000 {
            let picked = pick_weighted(&backends, rng.random_range(0..total)).expect("a backend");
            assert_ne!(picked.service.name, "off");
            if picked.service.name == "v2" {
                v2 += 1;
            }
        }
        // 10% is 200; three percentage points either way is 60.
        assert!((140..=260).contains(&v2), "v2 got {v2} of 2000");
        assert_eq!(pick_weighted(&[backend("off", 0)], 0), None);
    }

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 80))
    }

    #[test]
    fn consecutive_failures_eject_with_a_doubling_back_off() {
        let outliers = Outliers::new(OutlierConfig::default());
        let pool = [addr(1), addr(2)];
        let start = Instant::now();
        let fail = |at: Instant| outliers.record(addr(1), true, &pool, at);
        // Four failures, a success, four more: never five in a row.
        for _ in 0..4 {
            assert!(!fail(start));
        }
        assert!(!outliers.record(addr(1), false, &pool, start));
        for _ in 0..4 {
            assert!(!fail(start));
        }
        assert!(fail(start), "the fifth consecutive failure ejects");
        assert_eq!(outliers.available(&pool, start), [addr(2)]);
        let second = Duration::from_secs(1);
        assert_eq!(
            outliers.available(&pool, start + Duration::from_secs(30) - second),
            [addr(2)]
        );
        let back = start + Duration::from_secs(30);
        assert_eq!(outliers.available(&pool, back), pool);
        // Ejected again: twice as long.
        for _ in 0..5 {
            fail(back);
        }
        assert_eq!(
            outliers.available(&pool, back + Duration::from_secs(59)),
            [addr(2)]
        );
        assert_eq!(
            outliers.available(&pool, back + Duration::from_secs(60)),
            pool
        );
    }

    #[test]
    fn the_last_available_endpoint_is_never_ejected() {
        let outliers = Outliers::new(OutlierConfig::default());
        let pool = [addr(1), addr(2)];
        let now = Instant::now();
        for _ in 0..5 {
            outliers.record(addr(1), true, &pool, now);
        }
        for _ in 0..20 {
            assert!(!outliers.record(addr(2), true, &pool, now));
        }
        assert_eq!(outliers.available(&pool, now), [addr(2)]);
        // An endpoint that left and came back starts afresh.
        outliers.keep_only(&HashSet::from([addr(2)]));
        assert_eq!(outliers.available(&pool, now), pool);
        let alone = [addr(3)];
        for _ in 0..20 {
            assert!(!outliers.record(addr(3), true, &alone, now));
        }
        assert_eq!(outliers.available(&alone, now), alone);
    }
}
