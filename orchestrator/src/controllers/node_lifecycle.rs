//! The node lifecycle controller: a Node whose agent has neither renewed its
//! Lease (in `kube-node-lease`) nor reported Ready for the grace period (10 s by
//! default, where Kubernetes waits 40 s and then 5 minutes of toleration) is
//! marked Ready=Unknown and tainted
//! `node.kubernetes.io/unreachable:NoExecute`, and its pods that do not tolerate
//! the taint are removed so their controllers recreate them on other nodes. When
//! the agent reports again, the taint goes.
//!
//! A heartbeat that was already older than the grace period when this controller
//! started, of a node not yet marked lost, counts from the controller's start:
//! while the store was unreachable no node could report, and a control plane that
//! comes back must give every node a full grace period rather than evict the pods
//! of all of them at once. A node that stopped reporting shortly before (the
//! leader that died and handed over) is still lost at its heartbeat's grace end.

use std::time::Duration;

use async_trait::async_trait;

use super::pods::{now_seconds, seconds};
use super::{Action, Cache, Context, Error, Reconciler};
use crate::api::registry::{ApiError, ObjectRef, Propagation, now as timestamp};
use crate::model::{
    Condition, ConditionStatus, FieldSelector, Kind, NODE_LEASE_NAMESPACE, Node, Object, Pod,
    Selector, Taint, TaintEffect, Toleration,
};
use crate::runtime::events::Type;

/// The taint a lost node gets (Kubernetes' name).
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// The shortest wait before looking at a node again, should the clock say it is
/// not quite lost yet when the wait ends.
const MIN_WAIT_MILLIS: u64 = 50;

pub struct NodeLifecycleController {
    /// How long a node may go without a heartbeat before it is lost.
    pub grace: Duration,
    /// The unix second this controller started (see [`health`]).
    pub started: i64,
}

/// What the controller concludes about a node at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Heard from within the grace period; lost at this unix second unless it
    /// reports again.
    Alive {
        lost_at: i64,
    },
    Lost,
}

/// The node's health from its last heartbeat: the later of its Lease's renewal
/// (`lease_renewed`) and its Ready condition's heartbeat. One already stale at
/// `started` (when the controller began watching) counts from then, unless the
/// node is already marked lost.
pub fn health(
    node: &Node,
    lease_renewed: Option<i64>,
    grace_seconds: i64,
    started: i64,
    now: i64,
) -> Health {
    let reported = ready_condition(node).and_then(|c| seconds(c.last_heartbeat_time.as_deref()));
    let beat = reported
        .max(lease_renewed)
        // A node that never reported counts from its creation.
        .or_else(|| seconds(node.metadata.creation_timestamp.as_deref()))
        .unwrap_or(now);
    let marked_lost = ready_condition(node).is_some_and(|c| c.status == ConditionStatus::Unknown);
    let heartbeat = match beat + grace_seconds <= started && !marked_lost {
        true => started,
        false => beat,
    };
    let lost_at = heartbeat + grace_seconds;
    if now < lost_at {
        Health::Alive { lost_at }
    } else {
        Health::Lost
    }
}

fn ready_condition(node: &Node) -> Option<&Condition> {
    node.status.conditions.iter().find(|c| c.r#type == "Ready")
}

fn is_unreachable_taint(taint: &Taint) -> bool {
    taint.key == UNREACHABLE && taint.effect == Some(TaintEffect::NoExecute)
}

/// How long `tolerations` let a pod stay on an unreachable node: None when they
/// do not tolerate it (evict now), Some(None) for ever, Some(Some(s)) for s
/// seconds.
pub fn tolerated_for(tolerations: &[Toleration]) -> Option<Option<i64>> {
    let unreachable = Taint {
        key: UNREACHABLE.into(),
        value: None,
        effect: Some(TaintEffect::NoExecute),
        time_added: None,
    };
    tolerations
        .iter()
        .filter(|t| t.tolerates(&unreachable))
        .map(|t| t.toleration_seconds)
        // The longest toleration wins; one without a limit wins outright.
        .max_by_key(|s| s.map_or(i64::MAX, |s| s))
}

#[async_trait]
impl Reconciler for NodeLifecycleController {
    const NAME: &'static str = "node-lifecycle-controller";
    const KIND: Kind = Kind::Node;
    const RELATED: &'static [Kind] = &[Kind::Lease];

    /// A node's Lease is the one named after it in `kube-node-lease`.
    fn owners_of(&self, object: &Object, _cache: &Cache) -> Vec<ObjectRef> {
        match object {
            Object::Lease(lease)
                if lease.metadata.namespace.as_deref() == Some(NODE_LEASE_NAMESPACE) =>
            {
                vec![node_ref(&lease.metadata.name)]
            }
            _ => Vec::new(),
        }
    }

    async fn reconcile(&self, object: &Object, ctx: &Context) -> Result<Action, Error> {
        let Object::Node(node) = object else {
            return Ok(Action::await_change());
        };
        let grace = i64::try_from(self.grace.as_secs()).unwrap_or(i64::MAX);
        let now = now_seconds();
        let tainted = node.spec.taints.iter().any(is_unreachable_taint);
        let lease_renewed = lease_renewed(ctx, &node.metadata.name).await?;
        match health(node, lease_renewed, grace, self.started, now) {
            Health::Alive { lost_at } => {
                if tainted {
                    let mut healed = node.clone();
                    healed.spec.taints.retain(|t| !is_unreachable_taint(t));
                    ctx.apply::<Node>(Object::Node(healed)).await?;
                    ctx.event(
                        Kind::Node,
                        &node.metadata,
                        Type::Normal,
                        "NodeReachable",
                        "the node's agent reports again; taint removed",
                    )
                    .await;
                }
                // To the millisecond: a whole-second wait would add up to a second
                // to the time a lost node's backends keep getting connections.
                let now_millis = jiff::Timestamp::now().as_millisecond();
                let wait = u64::try_from(lost_at * 1000 - now_millis).unwrap_or(0);
                Ok(Action::requeue(Duration::from_millis(
                    wait.max(MIN_WAIT_MILLIS),
                )))
            }
            Health::Lost => {
                let mut lost = node.clone();
                if ready_condition(node).is_none_or(|c| c.status != ConditionStatus::Unknown) {
                    let stamp = timestamp();
                    lost.status.conditions.retain(|c| c.r#type != "Ready");
                    lost.status.conditions.push(Condition {
                        r#type: "Ready".into(),
                        status: ConditionStatus::Unknown,
                        reason: Some("NodeStatusUnknown".into()),
                        message: Some(format!(
                            "the node's agent stopped reporting (no heartbeat for {grace}s)"
                        )),
                        last_transition_time: Some(stamp),
                        last_heartbeat_time: ready_condition(node)
                            .and_then(|c| c.last_heartbeat_time.clone()),
                        ..Condition::default()
                    });
                    ctx.update_status(Object::Node(lost.clone())).await?;
                    ctx.event(Kind::Node, &node.metadata, Type::Warning, "NodeNotReady", &format!("no heartbeat for {grace}s; marked Unknown and tainted {UNREACHABLE}:NoExecute"))
                        .await;
                }
                let taint_time = match node.spec.taints.iter().find(|t| is_unreachable_taint(t)) {
                    Some(taint) => seconds(taint.time_added.as_deref()).unwrap_or(now),
                    None => {
                        let stored = ctx
                            .registry
                            .get(&node_ref(&node.metadata.name))
                            .await
                            .map_err(read_error)?;
                        let Ok(Object::Node(mut current)) = Object::decode_stored(stored) else {
                            return Ok(Action::await_change());
                        };
                        current.spec.taints.push(Taint {
                            key: UNREACHABLE.into(),
                            value: None,
                            effect: Some(TaintEffect::NoExecute),
                            time_added: Some(timestamp()),
                        });
                        ctx.apply::<Node>(Object::Node(current)).await?;
                        now
                    }
                };
                evict(ctx, node, now - taint_time).await
            }
        }
    }
}

/// When the node's Lease was last renewed; None without one.
async fn lease_renewed(ctx: &Context, node: &str) -> Result<Option<i64>, Error> {
    let reference = ObjectRef {
        kind: Kind::Lease,
        namespace: Some(NODE_LEASE_NAMESPACE.into()),
        name: node.into(),
    };
    match ctx.registry.get(&reference).await {
        Ok(stored) => Ok(match Object::decode_stored(stored) {
            Ok(Object::Lease(lease)) => seconds(lease.spec.renew_time.as_deref()),
            _ => None,
        }),
        Err(ApiError::NotFound { .. }) => Ok(None),
        Err(source) => Err(Error::Read {
            kind: Kind::Lease,
            namespace: NODE_LEASE_NAMESPACE.into(),
            source,
        }),
    }
}

fn node_ref(name: &str) -> ObjectRef {
    ObjectRef {
        kind: Kind::Node,
        namespace: None,
        name: name.into(),
    }
}

fn read_error(source: ApiError) -> Error {
    Error::Read {
        kind: Kind::Node,
        namespace: String::new(),
        source,
    }
}

/// Removes the pods of a node unreachable for `elapsed` seconds that do not
/// tolerate it that long; requeues for the first toleration to run out.
async fn evict(ctx: &Context, node: &Node, elapsed: i64) -> Result<Action, Error> {
    let fields = FieldSelector::parse(&format!("spec.nodeName={}", node.metadata.name))
        .unwrap_or_else(|_| FieldSelector::everything());
    let (values, _) = ctx
        .registry
        .list(Kind::Pod, None, &Selector::everything(), &fields)
        .await
        .map_err(|source| Error::Read {
            kind: Kind::Pod,
            namespace: String::new(),
            source,
        })?;
    let mut next: Option<i64> = None;
    for value in values {
        let Ok(Object::Pod(pod)) = Object::decode_stored(value) else {
            continue;
        };
        match tolerated_for(&pod.spec.tolerations) {
            Some(None) => continue,
            Some(Some(limit)) if elapsed < limit => {
                next = Some(next.map_or(limit - elapsed, |n| n.min(limit - elapsed)));
                continue;
            }
            _ => remove(ctx, node, &pod).await?,
        }
    }
    Ok(match next {
        Some(seconds) => Action::requeue(Duration::from_secs(
            u64::try_from(seconds).unwrap_or(1).max(1),
        )),
        // Heard from again or not, the next heartbeat (a Node change) wakes us.
        None => Action::await_change(),
    })
}

/// Deletes a pod of a lost node at once: nobody is there to stop it gracefully,
/// and its agent, if it returns, tears down what the store no longer has.
async fn remove(ctx: &Context, node: &Node, pod: &Pod) -> Result<(), Error> {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let reference = ObjectRef {
        kind: Kind::Pod,
        namespace: Some(namespace.clone()),
        name: pod.metadata.name.clone(),
    };
    match ctx
        .registry
        .delete(&reference, Some(0), Propagation::Background)
        .await
    {
        Ok(_) | Err(ApiError::NotFound { .. }) => {}
        Err(source) => {
            return Err(Error::Write {
                action: "evicting",
                kind: Kind::Pod,
                namespace,
                name: pod.metadata.name.clone(),
                source,
            });
        }
    }
    ctx.event(
        Kind::Pod,
        &pod.metadata,
        Type::Warning,
        "TaintManagerEviction",
        &format!(
            "node {} is unreachable; pod removed so it is replaced elsewhere",
            node.metadata.name
        ),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TolerationOperator;

    fn node_with_heartbeat(stamp: Option<&str>) -> Node {
        let mut node = Node::default();
        node.metadata.creation_timestamp = Some("2026-01-01T00:00:00Z".into());
        if let Some(stamp) = stamp {
            node.status.conditions.push(Condition {
                r#type: "Ready".into(),
                status: ConditionStatus::True,
                last_heartbeat_time: Some(stamp.into()),
                ..Condition::default()
            });
        }
        node
    }

    #[test]
    fn the_later_of_the_lease_and_the_ready_heartbeat_counts() {
        let beat = seconds(Some("2026-01-01T00:01:00Z")).expect("time");
        let node = node_with_heartbeat(Some("2026-01-01T00:01:00Z"));
        // The status is written once a minute; the Lease every few seconds.
        assert_eq!(
            health(&node, Some(beat + 50), 10, 0, beat + 55),
            Health::Alive { lost_at: beat + 60 }
        );
        assert_eq!(
            health(&node, Some(beat + 50), 10, 0, beat + 60),
            Health::Lost
        );
        // A Lease older than the status (an agent that reported, then lost its
        // Lease's write) does not make the node older.
        assert_eq!(
            health(&node, Some(beat - 30), 10, 0, beat + 9),
            Health::Alive { lost_at: beat + 10 }
        );
        // A node that only ever renewed its Lease.
        assert_eq!(
            health(&node_with_heartbeat(None), Some(beat), 10, 0, beat + 9),
            Health::Alive { lost_at: beat + 10 }
        );
    }

    #[test]
    fn a_node_is_lost_after_the_grace_period_without_a_heartbeat() {
        let beat = seconds(Some("2026-01-01T00:01:00Z")).expect("time");
        let node = node_with_heartbeat(Some("2026-01-01T00:01:00Z"));
        assert_eq!(
            health(&node, None, 10, 0, beat + 9),
            Health::Alive { lost_at: beat + 10 }
        );
        assert_eq!(health(&node, None, 10, 0, beat + 10), Health::Lost);
        // Never reported: counted from creation.
        let created = seconds(Some("2026-01-01T00:00:00Z")).expect("time");
        assert_eq!(
            health(&node_with_heartbeat(None), None, 10, 0, created + 11),
            Health::Lost
        );
        // A controller that started when the heartbeat was already stale (the
        // store was unreachable) gives the node the grace period from then...
        let started = beat + 60;
        assert_eq!(
            health(&node, None, 10, started, started + 9),
            Health::Alive {
                lost_at: started + 10
            }
        );
        assert_eq!(health(&node, None, 10, started, started + 10), Health::Lost);
        // ... but not to a node already marked lost,
        let mut marked = node.clone();
        marked.status.conditions[0].status = ConditionStatus::Unknown;
        assert_eq!(
            health(&marked, None, 10, started, started + 1),
            Health::Lost
        );
        // nor to one that went quiet just before it started (a leader that died).
        assert_eq!(
            health(&node, None, 10, beat + 3, beat + 9),
            Health::Alive { lost_at: beat + 10 }
        );
        assert_eq!(health(&node, None, 10, beat + 3, beat + 10), Health::Lost);
    }

    fn toleration(
        key: Option<&str>,
        operator: TolerationOperator,
        effect: Option<TaintEffect>,
        seconds: Option<i64>,
    ) -> Toleration {
        Toleration {
            key: key.map(Into::into),
            operator: Some(operator),
            value: None,
            effect,
            toleration_seconds: seconds,
        }
    }

    #[test]
    fn tolerations_decide_how_long_a_pod_stays() {
        use TolerationOperator::{Equal, Exists};
        assert_eq!(tolerated_for(&[]), None);
        let other = toleration(Some("example.com/x"), Exists, None, None);
        assert_eq!(tolerated_for(&[other]), None);
        let no_schedule = toleration(
            Some(UNREACHABLE),
            Exists,
            Some(TaintEffect::NoSchedule),
            None,
        );
        assert_eq!(tolerated_for(&[no_schedule]), None);
        let thirty = toleration(
            Some(UNREACHABLE),
            Exists,
            Some(TaintEffect::NoExecute),
            Some(30),
        );
        assert_eq!(tolerated_for(std::slice::from_ref(&thirty)), Some(Some(30)));
        let forever = toleration(None, Exists, None, None);
        assert_eq!(tolerated_for(&[thirty, forever]), Some(None));
        let equal = toleration(Some(UNREACHABLE), Equal, None, Some(5));
        assert_eq!(tolerated_for(&[equal]), Some(Some(5)));
    }
}
