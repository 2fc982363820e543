//! The ReplicaSet controller: keeps `spec.replicas` active pods stamped from the
//! template (named `<replicaset>-<5 random characters>`), replaces pods that were
//! deleted or finished, deletes the extras in Kubernetes' order (not ready and
//! newest first), and reports replicas, readyReplicas, availableReplicas (ready for
//! minReadySeconds) and observedGeneration.

use std::time::Duration;

use async_trait::async_trait;

use super::pods::{self, is_active, is_available, is_finished, is_ready};
use super::{Action, Context, Error, Reconciler, controlled_by, namespace_of, owner_reference};
use crate::model::{Kind, Object, ObjectMeta, Pod, ReplicaSet, ReplicaSetStatus};
use crate::runtime::events::Type;

pub struct ReplicaSetController;

/// What one reconcile does to a ReplicaSet's pods.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// How many pods to create.
    pub create: usize,
    /// Names of the pods to delete: finished ones, then the extras.
    pub delete: Vec<String>,
}

/// The pods to create and delete so that `replicas` are active.
pub fn plan(replicas: i32, pods: &[&Pod]) -> Plan {
    let mut delete: Vec<String> = pods
        .iter()
        .filter(|p| is_finished(p) && p.metadata.deletion_timestamp.is_none())
        .map(|p| p.metadata.name.clone())
        .collect();
    let active: Vec<&Pod> = pods.iter().copied().filter(|p| is_active(p)).collect();
    let wanted = usize::try_from(replicas).unwrap_or(0);
    let create = wanted.saturating_sub(active.len());
    let extra = active.len().saturating_sub(wanted);
    delete.extend(
        pods::to_delete(&active, extra)
            .into_iter()
            .map(|i| active[i].metadata.name.clone()),
    );
    Plan { create, delete }
}

/// The status of a ReplicaSet whose pods are `pods`, at `now`.
pub fn status(rs: &ReplicaSet, pods: &[&Pod], now: i64) -> ReplicaSetStatus {
    let active: Vec<&Pod> = pods.iter().copied().filter(|p| is_active(p)).collect();
    let min_ready = rs.spec.min_ready_seconds.unwrap_or(0);
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let labels = &rs.spec.template.metadata.labels;
    ReplicaSetStatus {
        replicas: Some(count(&|_| true)),
        fully_labeled_replicas: Some(count(&|p| {
            labels
                .iter()
                .all(|(k, v)| p.metadata.labels.get(k) == Some(v))
        })),
        ready_replicas: Some(count(&|p| is_ready(p))),
        available_replicas: Some(count(&|p| is_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.conditions.clone(),
    }
}

/// A pod of `rs`, from its template, owned by it.
pub fn new_pod(rs: &ReplicaSet) -> Pod {
    let template = &rs.spec.template;
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.metadata.name)),
            namespace: Some(namespace_of(&rs.metadata).to_string()),
            labels: template.metadata.labels.clone(),
            annotations: template.metadata.annotations.clone(),
            owner_references: vec![owner_reference(Kind::ReplicaSet, &rs.metadata)],
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: Default::default(),
    }
}

/// The pods `rs` controls, read from the store.
pub async fn owned_pods(ctx: &Context, rs: &ReplicaSet) -> Result<Vec<Pod>, Error> {
    let pods: Vec<Pod> = ctx.list(Kind::Pod, namespace_of(&rs.metadata)).await?;
    let uid = rs.metadata.uid.as_deref();
    Ok(pods
        .into_iter()
        .filter(|p| controlled_by(&p.metadata, uid))
        .collect())
}

#[async_trait]
impl Reconciler for ReplicaSetController {
    const NAME: &'static str = "replicaset-controller";
    const KIND: Kind = Kind::ReplicaSet;
    const RELATED: &'static [Kind] = &[Kind::Pod];

    async fn reconcile(&self, object: &Object, ctx: &Context) -> Result<Action, Error> {
        let Ok(rs) = ReplicaSet::try_from(object.clone()) else {
            return Ok(Action::await_change());
        };
        if rs.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let pods = owned_pods(ctx, &rs).await?;
        let refs: Vec<&Pod> = pods.iter().collect();
        let plan = plan(rs.spec.replicas.unwrap_or(1), &refs);
        for _ in 0..plan.create {
            match ctx.apply::<Pod>(new_pod(&rs).into()).await {
                Ok(pod) => {
                    let message = format!("Created pod: {}", pod.metadata.name);
                    ctx.event(
                        Kind::ReplicaSet,
                        &rs.metadata,
                        Type::Normal,
                        "SuccessfulCreate",
                        &message,
                    )
                    .await;
                }
                Err(e) => {
                    let message = format!("Error creating: {e}");
                    ctx.event(
                        Kind::ReplicaSet,
                        &rs.metadata,
                        Type::Warning,
                        "FailedCreate",
                        &message,
                    )
                    .await;
                    return Err(e);
                }
            }
        }
        for name in &plan.delete {
            let Some(pod) = pods.iter().find(|p| &p.metadata.name == name) else {
                continue;
            };
            ctx.delete(Kind::Pod, &pod.metadata).await?;
            let message = format!("Deleted pod: {name}");
            ctx.event(
                Kind::ReplicaSet,
                &rs.metadata,
                Type::Normal,
                "SuccessfulDelete",
                &message,
            )
            .await;
        }
        let now = pods::now_seconds();
        let mut updated = rs.clone();
        updated.status = status(&rs, &refs, now);
        ctx.update_status(updated.into()).await?;
        // A ready pod becomes available after minReadySeconds with no event to say so.
        let min_ready = rs.spec.min_ready_seconds.unwrap_or(0);
        let soonest = refs
            .iter()
            .filter(|p| is_active(p))
            .filter_map(|p| pods::seconds_to_available(p, min_ready, now))
            .min();
        Ok(match soonest {
            Some(seconds) => Action::requeue(Duration::from_secs(seconds.unsigned_abs())),
            None => Action::await_change(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::pods::tests::pod;
    use crate::model::PodPhase;

    #[test]
    fn missing_pods_are_created_and_finished_ones_replaced() {
        let a = pod("a", 1, Some(2));
        let mut failed = pod("failed", 1, None);
        failed.status.phase = Some(PodPhase::Failed);
        let mut leaving = pod("leaving", 1, Some(2));
        leaving.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        let plan = plan(3, &[&a, &failed, &leaving]);
        assert_eq!(plan.create, 2, "only `a` counts");
        assert_eq!(plan.delete, ["failed"]);
    }

    #[test]
    fn extras_are_deleted_not_ready_first() {
        let ready = pod("ready", 1, Some(2));
        let starting = pod("starting", 5, None);
        let newer_ready = pod("newer-ready", 3, Some(4));
        let plan = plan(1, &[&ready, &starting, &newer_ready]);
        assert_eq!(plan.create, 0);
        assert_eq!(plan.delete, ["starting", "newer-ready"]);
        assert_eq!(super::plan(0, &[]).delete, Vec::<String>::new());
    }

    #[test]
    fn status_counts_ready_and_available_pods() {
        let mut rs = ReplicaSet::default();
        rs.metadata.generation = Some(4);
        rs.spec.min_ready_seconds = Some(10);
        rs.spec
            .template
            .metadata
            .labels
            .insert("app".into(), "web".into());
        let mut old = pod("old", 1, Some(100));
        old.metadata.labels.insert("app".into(), "web".into());
        let fresh = pod("fresh", 1, Some(105));
        let starting = pod("starting", 1, None);
        let status = status(&rs, &[&old, &fresh, &starting], 112);
        assert_eq!(status.replicas, Some(3));
        assert_eq!(status.ready_replicas, Some(2));
        assert_eq!(status.available_replicas, Some(1));
        assert_eq!(status.fully_labeled_replicas, Some(1));
        assert_eq!(status.observed_generation, Some(4));
    }

    #[test]
    fn new_pods_carry_the_template_and_an_owner() {
        let mut rs = ReplicaSet::default();
        rs.metadata.name = "web-abc".into();
        rs.metadata.uid = Some("uid-1".into());
        rs.spec
            .template
            .metadata
            .labels
            .insert("app".into(), "web".into());
        rs.spec.template.spec.node_name = Some("n1".into());
        let pod = new_pod(&rs);
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(pod.metadata.labels["app"], "web");
        assert_eq!(pod.spec.node_name.as_deref(), Some("n1"));
        let owner = &pod.metadata.owner_references[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("ReplicaSet", "uid-1")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
    }
}
