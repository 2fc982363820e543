//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, section 3.4) for the NodePort path.
//!
//! Every backend gets a permutation of the M table positions from two hashes of
//! its address; backends take turns claiming their next free position until the
//! table is full. The table depends only on the set of backends and M, so every
//! node computes the same one, each backend gets about M/N positions, and removing
//! a backend moves little more than the flows it had.
//!
//! Weights: a backend that appears in k slots of the service table (the weighted
//! slots of `desired`) takes k turns for every turn of a backend with one slot.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use skiff_ebpf_common::nodeport::{MAX_MAGLEV_SIZE, jhash_words};
use skiff_ebpf_common::{Backend, raw_addr};

/// Seeds of the two hashes of a backend; all nodes must use the same.
const OFFSET_SEED: u32 = 0x6d61_676c;
const SKIP_SEED: u32 = 0x6576_3031;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("the Maglev table size {0} is not a prime between 3 and {MAX_MAGLEV_SIZE}")]
    Size(u32),
}

/// Checks a table size: a prime (so every skip visits every position) within the
/// range the kernel side indexes.
pub fn check_size(size: u32) -> Result<u32, MaglevError> {
    if (3..=MAX_MAGLEV_SIZE).contains(&size) && is_prime(size) {
        Ok(size)
    } else {
        Err(MaglevError::Size(size))
    }
}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d: &u32| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The Maglev table of size `size` (a checked prime) for a service table's slots:
/// each entry is the index of a slot (the first slot of its backend). Empty when
/// there are no slots.
pub fn table(slots: &[SocketAddr], size: u32) -> Vec<u16> {
    // Distinct backends, each with its first slot and its number of slots (weight),
    // in address order so the result does not depend on the slots' order.
    let mut backends: BTreeMap<SocketAddr, (u16, u32)> = BTreeMap::new();
    for (index, addr) in slots.iter().enumerate() {
        let Ok(index) = u16::try_from(index) else {
            break;
        };
        backends
            .entry(*addr)
            .and_modify(|(_, weight)| *weight += 1)
            .or_insert((index, 1));
    }
    if backends.is_empty() {
        return Vec::new();
    }
    let m = u64::from(size);
    let backends: Vec<Permutation> = backends
        .into_iter()
        .map(|(addr, (slot, weight))| {
            let (offset, skip) = hashes(addr);
            Permutation {
                slot,
                weight: u64::from(weight),
                offset: u64::from(offset) % m,
                skip: u64::from(skip) % (m - 1) + 1,
                next: 0,
            }
        })
        .collect();
    fill(backends, size)
}

struct Permutation {
    slot: u16,
    weight: u64,
    offset: u64,
    skip: u64,
    /// How far along its permutation the backend is.
    next: u64,
}

fn fill(mut backends: Vec<Permutation>, size: u32) -> Vec<u16> {
    let m = u64::from(size);
    let max_weight = backends.iter().map(|b| b.weight).max().unwrap_or(1);
    let mut entries: Vec<Option<u16>> = vec![None; size as usize];
    let mut filled = 0u64;
    let mut round = 0u64;
    while filled < m {
        for backend in &mut backends {
            // A backend of weight w takes a turn in the rounds where its credit
            // (w / max weight per round) passes a whole number.
            let turns =
                (round + 1) * backend.weight / max_weight - round * backend.weight / max_weight;
            for _ in 0..turns {
                // A permutation visits every position (m is prime), and some are free.
                loop {
                    let position = (backend.offset + backend.next * backend.skip) % m;
                    backend.next += 1;
                    let entry = &mut entries[position as usize];
                    if entry.is_none() {
                        *entry = Some(backend.slot);
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break;
                }
            }
            if filled == m {
                break;
            }
        }
        round += 1;
    }
    entries.into_iter().map(|e| e.unwrap_or(0)).collect()
}

/// The two hashes of a backend: where its permutation starts and its step.
fn hashes(addr: SocketAddr) -> (u32, u32) {
    let backend = Backend::from_socket_addr(addr);
    let (raw, family) = raw_addr(addr.ip());
    let words = [
        raw[0],
        raw[1],
        raw[2],
        raw[3],
        (u32::from(backend.port) << 8) | u32::from(family),
    ];
    (
        jhash_words(&words, OFFSET_SEED),
        jhash_words(&words, SKIP_SEED),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const M: u32 = 16_381;

    fn backends(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 244, (i / 250) as u8, (i % 250) as u8 + 2], 8080)))
            .collect()
    }

    fn shares(table: &[u16]) -> HashMap<u16, usize> {
        let mut counts = HashMap::new();
        for slot in table {
            *counts.entry(*slot).or_default() += 1;
        }
        counts
    }

    #[test]
    fn sizes_must_be_primes_in_range() {
        assert_eq!(check_size(16_381), Ok(16_381));
        assert_eq!(check_size(1_021), Ok(1_021));
        assert_eq!(check_size(1_024), Err(MaglevError::Size(1_024)));
        assert_eq!(check_size(2), Err(MaglevError::Size(2)));
        assert_eq!(check_size(65_537), Err(MaglevError::Size(65_537)));
        assert!(check_size(MAX_MAGLEV_SIZE).is_ok());
    }

    #[test]
    fn every_backend_gets_an_even_share() {
        for n in [1, 2, 3, 7, 10, 100] {
            let slots = backends(n);
            let table = table(&slots, M);
            assert_eq!(table.len(), M as usize);
            let counts = shares(&table);
            assert_eq!(counts.len(), n, "every backend has entries");
            let even = f64::from(M) / n as f64;
            for (slot, count) in counts {
                let off = (count as f64 - even).abs() / even;
                // The paper's bound: shares differ by at most about N/M.
                assert!(
                    off < 0.02,
                    "n={n}: slot {slot} has {count}, even is {even:.0}"
                );
            }
        }
    }

    #[test]
    fn removing_a_backend_moves_little_more_than_its_own_entries() {
        let all = backends(10);
        let before = table(&all, M);
        let removed = all[4];
        let rest: Vec<SocketAddr> = all.iter().copied().filter(|a| *a != removed).collect();
        let after = table(&rest, M);
        let name = |slots: &[SocketAddr], slot: u16| slots[usize::from(slot)];
        let mut moved = 0;
        let mut moved_from_kept = 0;
        for (old, new) in before.iter().zip(&after) {
            let (old, new) = (name(&all, *old), name(&rest, *new));
            if old != new {
                moved += 1;
                if old != removed {
                    moved_from_kept += 1;
                }
            }
        }
        let own = before.iter().filter(|s| name(&all, **s) == removed).count();
        assert_eq!(
            moved - moved_from_kept,
            own,
            "all of the removed backend's entries move"
        );
        // The paper measures a few percent of the other entries moving.
        assert!(
            moved_from_kept * 100 < M as usize * 3,
            "{moved_from_kept} of {M} entries of kept backends moved"
        );
    }

    #[test]
    fn two_nodes_compute_the_same_table_whatever_the_order() {
        let mut a = backends(5);
        let node_a = table(&a, 1_021);
        a.reverse();
        let node_b = table(&a, 1_021);
        // The same backend at every position (slot numbers follow each list).
        for (x, y) in node_a.iter().zip(&node_b) {
            assert_eq!(a[4 - usize::from(*x)], a[usize::from(*y)]);
        }
        let sorted = backends(5);
        assert_eq!(table(&sorted, 1_021), node_a, "deterministic");
    }

    #[test]
    fn weighted_slots_get_proportional_shares() {
        let a: SocketAddr = "10.244.0.2:8080".parse().unwrap();
        let b: SocketAddr = "10.244.0.3:8080".parse().unwrap();
        // The slot list of a 9:1 split: a fills slots 0-8, b slot 9.
        let mut slots = vec![a; 9];
        slots.push(b);
        let counts = shares(&table(&slots, M));
        assert_eq!(counts.len(), 2, "{counts:?}");
        let b_share = counts[&9] as f64 / f64::from(M);
        assert!((0.09..0.11).contains(&b_share), "{counts:?}");
        assert_eq!(counts[&0] + counts[&9], M as usize);
    }

    #[test]
    fn no_slots_no_table_and_one_backend_everywhere() {
        assert!(table(&[], M).is_empty());
        let one = table(&backends(1), 7);
        assert_eq!(one, vec![0; 7]);
    }

    #[test]
    fn both_families_hash() {
        let slots: Vec<SocketAddr> = ["[fd00:10:244::2]:8080", "[fd00:10:244::3]:8080"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let counts = shares(&table(&slots, 1_021));
        assert_eq!(counts.len(), 2);
    }
}
