//! The pods waiting for a decision, as plain data: active ones in order of
//! priority (then arrival), and parked ones that fit nowhere, which wait for the
//! cluster to change rather than being retried in a loop.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use super::snapshot::PodKey;

/// Where a queued pod is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Waiting for a decision: its priority and arrival number.
    Active(i32, u64),
    /// Fit nowhere at its last decision.
    Parked(i32),
}

#[derive(Debug, Default)]
pub struct Queue {
    active: BTreeSet<(Reverse<i32>, u64, PodKey)>,
    places: HashMap<PodKey, Place>,
    arrivals: u64,
}

impl Queue {
    /// Queues a pod for a decision (again); a pod already active keeps its turn.
    pub fn push(&mut self, key: PodKey, priority: i32) {
        if let Some(Place::Active(..)) = self.places.get(&key) {
            return;
        }
        self.arrivals += 1;
        self.active
            .insert((Reverse(priority), self.arrivals, key.clone()));
        self.places
            .insert(key, Place::Active(priority, self.arrivals));
    }

    /// The next pod to decide on, the highest priority first.
    pub fn pop(&mut self) -> Option<PodKey> {
        let (_, _, key) = self.active.pop_first()?;
        self.places.remove(&key);
        Some(key)
    }

    /// Sets a pod aside until [`Queue::wake`].
    pub fn park(&mut self, key: PodKey, priority: i32) {
        self.remove(&key);
        self.places.insert(key, Place::Parked(priority));
    }

    /// Moves every parked pod back to the active queue: the cluster changed, so
    /// they may fit now.
    pub fn wake(&mut self) {
        let parked: Vec<(PodKey, i32)> = self
            .places
            .iter()
            .filter_map(|(key, place)| match place {
                Place::Parked(priority) => Some((key.clone(), *priority)),
                Place::Active(..) => None,
            })
            .collect();
        for (key, priority) in parked {
            self.places.remove(&key);
            self.push(key, priority);
        }
    }

    pub fn remove(&mut self, key: &PodKey) {
        if let Some(Place::Active(priority, arrival)) = self.places.remove(key) {
            self.active
                .remove(&(Reverse(priority), arrival, key.clone()));
        }
    }

    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> PodKey {
        PodKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn higher_priority_first_then_arrival_and_parked_pods_wait_for_wake() {
        let mut queue = Queue::default();
        queue.push(key("low"), 0);
        queue.push(key("high"), 100);
        queue.push(key("low-2"), 0);
        queue.push(key("low"), 0);
        assert_eq!(queue.pop(), Some(key("high")));
        queue.park(key("high"), 100);
        assert_eq!(queue.pop(), Some(key("low")));
        assert_eq!(queue.pop(), Some(key("low-2")));
        assert_eq!(queue.pop(), None);
        queue.wake();
        assert_eq!(queue.pop(), Some(key("high")));
        assert_eq!(queue.pop(), None);
        queue.push(key("gone"), 0);
        queue.remove(&key("gone"));
        assert!(!queue.has_active());
    }
}
