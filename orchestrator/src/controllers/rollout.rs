//! The Deployment controller's arithmetic, as Kubernetes does it: maxSurge and
//! maxUnavailable from counts or percentages (surge rounds up, unavailability
//! down, and both zero means one unavailable), how far the new ReplicaSet may grow,
//! how far the old ones may shrink without dropping below the available minimum,
//! template hashes and revisions. Pure functions, unit-tested.

use crate::model::{
    DeploymentSpec, DeploymentStrategyType, IntOrString, PodTemplateSpec, ReplicaSet,
};

/// The label and selector key that ties a ReplicaSet (and its pods) to one template.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// The revision of a Deployment (its newest ReplicaSet) and of each ReplicaSet.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

/// A count or a percentage of `total`: percentages round up or down.
pub fn resolve(value: &IntOrString, total: i32, round_up: bool) -> i32 {
    match value {
        IntOrString::Int(count) => *count,
        IntOrString::String(text) => {
            // Validation accepted only "N%" with 0 <= N <= 100.
            let percent = text
                .strip_suffix('%')
                .and_then(|p| p.parse::<i64>().ok())
                .unwrap_or(0);
            let scaled = percent * i64::from(total);
            let rounded = if round_up {
                (scaled + 99).div_euclid(100)
            } else {
                scaled.div_euclid(100)
            };
            i32::try_from(rounded).unwrap_or(i32::MAX)
        }
    }
}

/// (maxSurge, maxUnavailable) for `desired` replicas; Recreate has neither.
pub fn surge_and_unavailable(spec: &DeploymentSpec, desired: i32) -> (i32, i32) {
    let strategy = spec.strategy.clone().unwrap_or_default();
    if strategy.r#type == Some(DeploymentStrategyType::Recreate) {
        return (0, 0);
    }
    let rolling = strategy.rolling_update.unwrap_or_default();
    let quarter = IntOrString::String("25%".into());
    let surge = resolve(
        rolling.max_surge.as_ref().unwrap_or(&quarter),
        desired,
        true,
    );
    let unavailable = resolve(
        rolling.max_unavailable.as_ref().unwrap_or(&quarter),
        desired,
        false,
    );
    // Nothing could ever move with both at zero.
    if surge == 0 && unavailable == 0 {
        (0, 1.min(desired.max(0)))
    } else {
        (surge, unavailable)
    }
}

/// Replicas and available replicas of one ReplicaSet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub replicas: i32,
    pub available: i32,
}

impl Counts {
    pub fn of(rs: &ReplicaSet) -> Self {
        Self {
            replicas: rs.spec.replicas.unwrap_or(0),
            available: rs.status.available_replicas.unwrap_or(0),
        }
    }
}

/// The new ReplicaSet's replicas in a rolling update: up to `desired`, as long as
/// all pods together stay within desired + maxSurge.
pub fn new_replicas(desired: i32, max_surge: i32, new: i32, old_total: i32) -> i32 {
    if new >= desired {
        return desired;
    }
    let room = desired + max_surge - (new + old_total);
    new + room.clamp(0, desired - new)
}

/// The old ReplicaSets' replicas (oldest first) in a rolling update: unavailable old
/// pods go first, then available ones, never leaving fewer than desired -
/// maxUnavailable available, counting the new ReplicaSet's unavailable pods against
/// the budget.
pub fn old_replicas(desired: i32, max_unavailable: i32, new: Counts, old: &[Counts]) -> Vec<i32> {
    let mut scaled: Vec<i32> = old.iter().map(|c| c.replicas).collect();
    let old_total: i32 = scaled.iter().sum();
    if old_total == 0 {
        return scaled;
    }
    let min_available = desired - max_unavailable;
    let new_unavailable = (new.replicas - new.available).max(0);
    let max_scaled_down = new.replicas + old_total - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return scaled;
    }
    // Unhealthy old pods help nobody: they go first, within the budget.
    let mut cleaned = 0;
    for (replicas, counts) in scaled.iter_mut().zip(old) {
        let unhealthy = (*replicas - counts.available).max(0);
        let step = unhealthy.min(max_scaled_down - cleaned);
        *replicas -= step;
        cleaned += step;
    }
    // Then available ones, as long as enough stay available.
    let available: i32 = new.available + old.iter().map(|c| c.available).sum::<i32>();
    let allowed = available - min_available;
    let mut done = 0;
    for replicas in &mut scaled {
        if done >= allowed {
            break;
        }
        let step = (*replicas).min(allowed - done);
        *replicas -= step;
        done += step;
    }
    scaled
}

/// A short, stable name for a pod template (FNV-1a of its JSON, in the letters
/// Kubernetes uses for generated names).
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let json = serde_json::to_vec(template).unwrap_or_default();
    let hash = json.iter().fold(0x811c_9dc5_u32, |h, byte| {
        (h ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    });
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rest = hash;
    let mut out = String::new();
    loop {
        out.push(char::from(ALPHABET[(rest % 27) as usize]));
        rest /= 27;
        if rest == 0 {
            return out;
        }
    }
}

/// A ReplicaSet's template without the hash label: what its Deployment's
/// template was.
pub fn deployment_template(rs: &ReplicaSet) -> PodTemplateSpec {
    let mut template = rs.spec.template.clone();
    template.metadata.labels.remove(TEMPLATE_HASH_LABEL);
    template
}

/// The revision annotation of a ReplicaSet (0 when absent or unreadable).
pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .get(REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The old ReplicaSets to delete: those with no pods, beyond the `limit` newest.
pub fn beyond_history(old: &[&ReplicaSet], limit: i32) -> Vec<String> {
    let mut idle: Vec<&&ReplicaSet> = old
        .iter()
        .filter(|rs| rs.spec.replicas.unwrap_or(0) == 0 && rs.status.replicas.unwrap_or(0) == 0)
        .collect();
    idle.sort_by_key(|rs| revision(rs));
    let keep = usize::try_from(limit).unwrap_or(0);
    let excess = idle.len().saturating_sub(keep);
    idle.into_iter()
        .take(excess)
        .map(|rs| rs.metadata.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeploymentStrategy, RollingUpdateDeployment};

    fn rolling(surge: IntOrString, unavailable: IntOrString) -> DeploymentSpec {
        DeploymentSpec {
            strategy: Some(DeploymentStrategy {
                r#type: Some(DeploymentStrategyType::RollingUpdate),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(surge),
                    max_unavailable: Some(unavailable),
                }),
            }),
            ..Default::default()
        }
    }

    fn pct(text: &str) -> IntOrString {
        IntOrString::String(text.into())
    }

    #[test]
    fn percentages_round_surge_up_and_unavailability_down() {
        assert_eq!(
            surge_and_unavailable(&rolling(pct("25%"), pct("25%")), 10),
            (3, 2)
        );
        assert_eq!(
            surge_and_unavailable(&rolling(pct("25%"), pct("25%")), 2),
            (1, 0)
        );
        assert_eq!(
            surge_and_unavailable(&rolling(pct("50%"), pct("50%")), 3),
            (2, 1)
        );
        assert_eq!(
            surge_and_unavailable(&rolling(IntOrString::Int(2), pct("100%")), 4),
            (2, 4)
        );
        assert_eq!(resolve(&pct("0%"), 7, true), 0);
        assert_eq!(resolve(&pct("1%"), 7, true), 1);
    }

    #[test]
    fn zero_surge_and_zero_unavailable_means_one_unavailable() {
        let spec = rolling(pct("0%"), IntOrString::Int(0));
        assert_eq!(surge_and_unavailable(&spec, 3), (0, 1));
        assert_eq!(surge_and_unavailable(&spec, 0), (0, 0));
        let recreate = DeploymentSpec {
            strategy: Some(DeploymentStrategy {
                r#type: Some(DeploymentStrategyType::Recreate),
                rolling_update: None,
            }),
            ..Default::default()
        };
        assert_eq!(surge_and_unavailable(&recreate, 5), (0, 0));
    }

    #[test]
    fn the_new_replicaset_grows_within_the_surge() {
        // 10 desired, surge 3: the new set starts at 3 next to 10 old pods.
        assert_eq!(new_replicas(10, 3, 0, 10), 3);
        // Still 10 old: no room.
        assert_eq!(new_replicas(10, 3, 3, 10), 3);
        // Old scaled down to 8: room for 2 more.
        assert_eq!(new_replicas(10, 3, 3, 8), 5);
        // Never beyond desired, and shrinks to desired when above.
        assert_eq!(new_replicas(10, 3, 9, 0), 10);
        assert_eq!(new_replicas(4, 1, 6, 0), 4);
    }

    #[test]
    fn old_replicasets_shrink_only_as_far_as_availability_allows() {
        let c = |replicas, available| Counts {
            replicas,
            available,
        };
        // desired 2, maxUnavailable 0, the new pod not ready yet: nothing goes.
        assert_eq!(old_replicas(2, 0, c(1, 0), &[c(2, 2)]), [2]);
        // The new pod became available: one old pod may go.
        assert_eq!(old_replicas(2, 0, c(1, 1), &[c(2, 2)]), [1]);
        // desired 10, maxUnavailable 2: two old pods go before anything is ready.
        assert_eq!(old_replicas(10, 2, c(3, 0), &[c(10, 10)]), [8]);
        // Unavailable old pods go first, from the oldest set.
        assert_eq!(old_replicas(4, 1, c(2, 0), &[c(2, 0), c(2, 2)]), [1, 2]);
        // A broken new set never eats into the available minimum.
        assert_eq!(old_replicas(3, 1, c(3, 0), &[c(2, 2)]), [2]);
    }

    #[test]
    fn hashes_are_stable_and_differ_between_templates() {
        let mut a = PodTemplateSpec::default();
        a.metadata.labels.insert("app".into(), "web".into());
        let mut b = a.clone();
        b.metadata.labels.insert("v".into(), "2".into());
        assert_eq!(template_hash(&a), template_hash(&a.clone()));
        assert_ne!(template_hash(&a), template_hash(&b));
        assert!(
            template_hash(&a)
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
    }

    #[test]
    fn history_keeps_the_newest_idle_replicasets() {
        let rs = |name: &str, revision: i64, replicas: i32| {
            let mut rs = ReplicaSet::default();
            rs.metadata.name = name.into();
            rs.metadata
                .annotations
                .insert(REVISION_ANNOTATION.into(), revision.to_string());
            rs.spec.replicas = Some(replicas);
            rs
        };
        let (r1, r2, r3, busy) = (
            rs("r1", 1, 0),
            rs("r2", 2, 0),
            rs("r3", 3, 0),
            rs("busy", 0, 2),
        );
        assert_eq!(beyond_history(&[&r3, &r1, &busy, &r2], 1), ["r1", "r2"]);
        assert!(beyond_history(&[&r3, &r1], 10).is_empty());
        assert_eq!(beyond_history(&[&r1], 0), ["r1"]);
    }
}
