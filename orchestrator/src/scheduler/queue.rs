//! The pods waiting for a decision, as plain data: active ones in order of
//! priority (then arrival), and parked ones that fit nowhere, which wait for the
//! cluster to change rather than being retried in a loop.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::snapshot::PodKey;

#[derive(Debug, Default)]
pub struct Queue {
    /// By priority (highest first), then arrival.
    active: BTreeSet<(Reverse<i32>, u64, PodKey)>,
    /// Each active pod's place in `active`.
    active_places: HashMap<PodKey, (i32, u64)>,
    /// Pods that fit nowhere at their last decision, with their priority; woken in
    /// name order, so decisions after a wake are repeatable.
    parked: BTreeMap<PodKey, i32>,
    arrivals: u64,
}

impl Queue {
    /// Queues a pod for a decision (again); a pod already active keeps its turn.
    pub fn push(&mut self, key: PodKey, priority: i32) {
        if self.active_places.contains_key(&key) {
            return;
        }
        self.parked.remove(&key);
        self.arrivals += 1;
        self.active
            .insert((Reverse(priority), self.arrivals, key.clone()));
        self.active_places.insert(key, (priority, self.arrivals));
    }

    /// The next pod to decide on, the highest priority first.
    pub fn pop(&mut self) -> Option<PodKey> {
        let (_, _, key) = self.active.pop_first()?;
        self.active_places.remove(&key);
        Some(key)
    }

    /// Sets a pod aside until [`Queue::wake`].
    pub fn park(&mut self, key: PodKey, priority: i32) {
        self.remove(&key);
        self.parked.insert(key, priority);
    }

    /// Moves every parked pod back to the active queue: the cluster changed, so
    /// they may fit now.
    pub fn wake(&mut self) {
        for (key, priority) in std::mem::take(&mut self.parked) {
            self.push(key, priority);
        }
    }

    pub fn remove(&mut self, key: &PodKey) {
        self.parked.remove(key);
        if let Some((priority, arrival)) = self.active_places.remove(key) {
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
