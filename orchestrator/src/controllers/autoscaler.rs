//! The HorizontalPodAutoscaler controller (autoscaling/v2, Resource metrics):
//! every sync period it reads the target's pods and the usage their nodes
//! published (PodMetrics), asks [`recommend`] how many replicas each metric
//! wants, holds the answer to the stabilisation window and rate policies, sets
//! the target's `spec.replicas` and reports what it saw in the status.

pub mod recommend;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use self::recommend::{Behavior, History, PodSample, Policy, Rules, Select, Target};
use super::pods::{is_active, is_ready, now_seconds};
use super::{Action, Context, Error, Reconciler, namespace_of};
use crate::api::registry::{ApiError, ObjectRef, now};
use crate::model::{
    Condition, ConditionStatus, HorizontalPodAutoscaler, HorizontalPodAutoscalerStatus,
    HpaScalingRules, Kind, LabelSelector, MetricSourceType, MetricStatus, MetricTargetType,
    MetricValueStatus, Object, Pod, PodMetrics, Quantity, ResourceMetricStatus,
    ScalingPolicySelect, ScalingPolicyType,
};
use crate::runtime::events::Type;

pub struct AutoscalerController {
    /// How often each autoscaler looks at its target (Kubernetes: 15 s).
    pub sync_period: Duration,
    /// Each autoscaler's recent recommendations and changes, by namespace/name.
    histories: Mutex<HashMap<(String, String), History>>,
}

impl AutoscalerController {
    pub fn new(sync_period: Duration) -> Self {
        Self {
            sync_period,
            histories: Mutex::new(HashMap::new()),
        }
    }
}

/// The workload an autoscaler scales, as far as it needs it.
struct Scaled {
    object: Object,
    replicas: i32,
    selector: LabelSelector,
}

impl Scaled {
    fn of(object: Object) -> Option<Self> {
        let (replicas, selector) = match &object {
            Object::Deployment(d) => (d.spec.replicas, d.spec.selector.clone()),
            Object::ReplicaSet(r) => (r.spec.replicas, r.spec.selector.clone()),
            _ => return None,
        };
        Some(Self {
            replicas: replicas.unwrap_or(1),
            selector,
            object,
        })
    }

    fn with_replicas(mut self, replicas: i32) -> Object {
        match &mut self.object {
            Object::Deployment(d) => d.spec.replicas = Some(replicas),
            Object::ReplicaSet(r) => r.spec.replicas = Some(replicas),
            _ => {}
        }
        self.object
    }
}

/// A resource's amount in the unit the arithmetic uses: millicores for cpu, bytes
/// for everything else.
fn amount(resource: &str, quantity: &Quantity) -> Option<i128> {
    let parsed = quantity.parse().ok()?;
    Some(if resource == "cpu" {
        parsed.millis()
    } else {
        parsed.value()
    })
}

/// The samples of `resource` for the target's active pods.
fn samples(resource: &str, pods: &[Pod], usage: &HashMap<String, PodMetrics>) -> Vec<PodSample> {
    pods.iter()
        .map(|pod| {
            let requests: Option<i128> = pod
                .spec
                .containers
                .iter()
                .map(|c| {
                    c.resources
                        .requests
                        .get(resource)
                        .and_then(|q| amount(resource, q))
                })
                .sum();
            let used: Option<i128> = usage.get(&pod.metadata.name).and_then(|m| {
                m.containers
                    .iter()
                    .map(|c| c.usage.get(resource).and_then(|q| amount(resource, q)))
                    .sum()
            });
            PodSample {
                ready: is_ready(pod),
                request: requests,
                usage: used,
            }
        })
        .collect()
}

/// The spec's behavior with Kubernetes' defaults filled in.
fn behavior(hpa: &HorizontalPodAutoscaler) -> Behavior {
    let rules = |given: Option<&HpaScalingRules>, default: Rules| -> Rules {
        let Some(given) = given else { return default };
        Rules {
            stabilization_seconds: given
                .stabilization_window_seconds
                .map_or(default.stabilization_seconds, i64::from),
            select: match given.select_policy {
                Some(ScalingPolicySelect::Min) => Select::Min,
                Some(ScalingPolicySelect::Disabled) => Select::Disabled,
                Some(ScalingPolicySelect::Max) | None => Select::Max,
            },
            policies: if given.policies.is_empty() {
                default.policies
            } else {
                given
                    .policies
                    .iter()
                    .map(|p| match p.r#type {
                        Some(ScalingPolicyType::Percent) => Policy::Percent {
                            value: p.value,
                            period_seconds: i64::from(p.period_seconds),
                        },
                        _ => Policy::Pods {
                            value: p.value,
                            period_seconds: i64::from(p.period_seconds),
                        },
                    })
                    .collect()
            },
        }
    };
    let spec_behavior = hpa.spec.behavior.as_ref();
    Behavior {
        min_replicas: hpa.spec.min_replicas.unwrap_or(1),
        max_replicas: hpa.spec.max_replicas,
        up: rules(
            spec_behavior.and_then(|b| b.scale_up.as_ref()),
            Rules::default_up(),
        ),
        down: rules(
            spec_behavior.and_then(|b| b.scale_down.as_ref()),
            Rules::default_down(),
        ),
    }
}

fn condition(kind: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        r#type: kind.into(),
        status: if status {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(now()),
        ..Condition::default()
    }
}

#[async_trait]
impl Reconciler for AutoscalerController {
    const NAME: &'static str = "horizontal-pod-autoscaler";
    const KIND: Kind = Kind::HorizontalPodAutoscaler;
    const RELATED: &'static [Kind] = &[];

    async fn reconcile(&self, object: &Object, ctx: &Context) -> Result<Action, Error> {
        let Object::HorizontalPodAutoscaler(hpa) = object else {
            return Ok(Action::await_change());
        };
        let namespace = namespace_of(&hpa.metadata).to_string();
        let target_ref = &hpa.spec.scale_target_ref;
        let mut status = HorizontalPodAutoscalerStatus {
            observed_generation: hpa.metadata.generation,
            last_scale_time: hpa.status.last_scale_time.clone(),
            ..HorizontalPodAutoscalerStatus::default()
        };
        let target = match Kind::from_cli_name(&target_ref.kind) {
            Some(kind @ (Kind::Deployment | Kind::ReplicaSet)) => {
                let reference = ObjectRef {
                    kind,
                    namespace: Some(namespace.clone()),
                    name: target_ref.name.clone(),
                };
                match ctx.registry.get(&reference).await {
                    Ok(value) => Object::decode_stored(value).ok().and_then(Scaled::of),
                    Err(ApiError::NotFound { .. }) => None,
                    Err(source) => {
                        return Err(Error::Read {
                            kind,
                            namespace,
                            source,
                        });
                    }
                }
            }
            _ => None,
        };
        let Some(target) = target else {
            status.conditions.push(condition(
                "AbleToScale",
                false,
                "FailedGetScale",
                format!(
                    "the target {}/{} does not exist or cannot be scaled (Deployment or ReplicaSet)",
                    target_ref.kind, target_ref.name
                ),
            ));
            write_status(ctx, hpa, status).await?;
            return Ok(Action::requeue(self.sync_period));
        };
        let pods: Vec<Pod> = ctx
            .list::<Pod>(Kind::Pod, &namespace)
            .await?
            .into_iter()
            .filter(|p| is_active(p) && target.selector.matches(&p.metadata.labels))
            .collect();
        let usage: HashMap<String, PodMetrics> = ctx
            .list::<PodMetrics>(Kind::PodMetrics, &namespace)
            .await?
            .into_iter()
            .map(|m| (m.metadata.name.clone(), m))
            .collect();
        let mut wanted: Option<i32> = None;
        let mut problems = Vec::new();
        for metric in &hpa.spec.metrics {
            let (Some(MetricSourceType::Resource), Some(resource)) =
                (metric.r#type, &metric.resource)
            else {
                continue;
            };
            let goal = match resource.target.r#type {
                Some(MetricTargetType::Utilization) => {
                    Target::Utilization(resource.target.average_utilization.unwrap_or(80))
                }
                _ => match resource
                    .target
                    .average_value
                    .as_ref()
                    .and_then(|q| amount(&resource.name, q))
                {
                    Some(value) => Target::AverageValue(value),
                    None => continue,
                },
            };
            let samples = samples(&resource.name, &pods, &usage);
            match recommend::replicas_for(&resource.name, target.replicas, goal, &samples) {
                Ok(r) => {
                    wanted = Some(wanted.map_or(r.replicas, |w| w.max(r.replicas)));
                    let current = match goal {
                        Target::Utilization(_) => MetricValueStatus {
                            average_utilization: i32::try_from(r.current).ok(),
                            average_value: None,
                        },
                        Target::AverageValue(_) => MetricValueStatus {
                            average_utilization: None,
                            average_value: Some(Quantity(if resource.name == "cpu" {
                                format!("{}m", r.current)
                            } else {
                                r.current.to_string()
                            })),
                        },
                    };
                    status.current_metrics.push(MetricStatus {
                        r#type: Some(MetricSourceType::Resource),
                        resource: Some(ResourceMetricStatus {
                            name: resource.name.clone(),
                            current,
                        }),
                    });
                }
                Err(e) => problems.push(format!("{}: {e}", resource.name)),
            }
        }
        status.current_replicas = Some(target.replicas);
        let Some(wanted) = wanted else {
            status.desired_replicas = Some(target.replicas);
            status.conditions.push(condition(
                "ScalingActive",
                false,
                "FailedGetResourceMetric",
                problems.join("; "),
            ));
            write_status(ctx, hpa, status).await?;
            return Ok(Action::requeue(self.sync_period));
        };
        let behavior = behavior(hpa);
        let desired = {
            let mut histories = self.histories.lock().unwrap_or_else(|p| p.into_inner());
            histories
                .entry((namespace.clone(), hpa.metadata.name.clone()))
                .or_default()
                .decide(now_seconds(), target.replicas, wanted, &behavior)
        };
        status.desired_replicas = Some(desired);
        status.conditions.push(condition(
            "AbleToScale",
            true,
            "SucceededRescale",
            "the target can be scaled".into(),
        ));
        status.conditions.push(condition(
            "ScalingActive",
            true,
            "ValidMetricFound",
            "usage is published for the target's pods".into(),
        ));
        let (limited, reason, message) = if wanted > behavior.max_replicas {
            (
                true,
                "TooManyReplicas",
                format!(
                    "recommended {wanted}, more than maxReplicas {}",
                    behavior.max_replicas
                ),
            )
        } else if wanted < behavior.min_replicas {
            (
                true,
                "TooFewReplicas",
                format!(
                    "recommended {wanted}, fewer than minReplicas {}",
                    behavior.min_replicas
                ),
            )
        } else if desired < wanted {
            (
                true,
                "ScaleUpLimit",
                format!("recommended {wanted}; the scale-up policies allow {desired} for now"),
            )
        } else if desired > wanted {
            (
                true,
                "ScaleDownLimit",
                format!(
                    "recommended {wanted}; held at {desired} by the scale-down stabilisation window and policies"
                ),
            )
        } else {
            (
                false,
                "DesiredWithinRange",
                format!(
                    "the recommended {wanted} is within {}..={}",
                    behavior.min_replicas, behavior.max_replicas
                ),
            )
        };
        status
            .conditions
            .push(condition("ScalingLimited", limited, reason, message));
        if desired != target.replicas {
            let from = target.replicas;
            let meta = target.object.metadata().clone();
            let kind = target.object.kind();
            ctx.apply::<Object>(target.with_replicas(desired)).await?;
            status.last_scale_time = Some(now());
            status.current_replicas = Some(desired);
            let reason = status
                .current_metrics
                .iter()
                .filter_map(|m| m.resource.as_ref().map(|r| r.name.clone()))
                .collect::<Vec<_>>()
                .join(", ");
            ctx.event(
                Kind::HorizontalPodAutoscaler,
                &hpa.metadata,
                Type::Normal,
                "SuccessfulRescale",
                &format!("New size: {desired} (was {from}); reason: {reason} usage against target"),
            )
            .await;
            log::info!(
                "autoscaler {namespace}/{}: {kind} {} scaled from {from} to {desired}",
                hpa.metadata.name,
                meta.name
            );
        }
        write_status(ctx, hpa, status).await?;
        Ok(Action::requeue(self.sync_period))
    }
}

/// Writes the status, keeping each condition's transition time while its status
/// stays (else every pass would be a change, and a new reconcile).
async fn write_status(
    ctx: &Context,
    hpa: &HorizontalPodAutoscaler,
    mut status: HorizontalPodAutoscalerStatus,
) -> Result<(), Error> {
    for condition in &mut status.conditions {
        if let Some(old) = hpa
            .status
            .conditions
            .iter()
            .find(|c| c.r#type == condition.r#type && c.status == condition.status)
        {
            condition.last_transition_time = old.last_transition_time.clone();
        }
    }
    ctx.update_status(Object::HorizontalPodAutoscaler(HorizontalPodAutoscaler {
        status,
        ..hpa.clone()
    }))
    .await
}
