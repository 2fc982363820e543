//! Priority admission (Kubernetes' Priority plugin): a pod created gets
//! `spec.priority` and `spec.preemptionPolicy` from the PriorityClass it names, or
//! from the global default class, or 0 and PreemptLowerPriority. A pod naming a
//! class that does not exist, or stating a priority or policy other than its
//! class's, is refused. An update keeps what creation set. The classes are read
//! once per request, however many pods it creates.

use super::{ApiError, Registry};
use crate::model::{FieldErrors, Kind, Object, PodSpec, PreemptionPolicy, PriorityClass};

/// The PriorityClasses, read at a request's first pod creation.
#[derive(Default)]
pub(super) struct Classes(Option<Vec<PriorityClass>>);

/// What a pod's class gives it.
struct Resolved {
    /// The class (the global default's name when the pod named none).
    class: Option<String>,
    value: i32,
    policy: PreemptionPolicy,
}

impl Registry {
    /// Sets the priority fields of the pod `object` (request index `index`) being
    /// written over `old`.
    pub(super) async fn admit_priority(
        &self,
        index: usize,
        object: &mut Object,
        old: Option<&Object>,
        classes: &mut Classes,
    ) -> Result<(), ApiError> {
        let Object::Pod(pod) = object else {
            return Ok(());
        };
        if let Some(Object::Pod(old)) = old {
            // Decided at creation; an update that leaves them out keeps them.
            let spec = &mut pod.spec;
            spec.priority = spec.priority.or(old.spec.priority);
            spec.preemption_policy = spec.preemption_policy.or(old.spec.preemption_policy);
            return Ok(());
        }
        let resolved = self.resolve(index, &pod.spec, classes).await?;
        let refuse = |field: &str, reason: String| {
            ApiError::invalid(index, FieldErrors::one(format!("spec.{field}"), reason))
        };
        let spec = &mut pod.spec;
        if let Some(priority) = spec.priority.filter(|p| *p != resolved.value) {
            return Err(refuse(
                "priority",
                format!(
                    "{priority} disagrees with {} ({}): leave it unset",
                    source(&resolved.class),
                    resolved.value
                ),
            ));
        }
        if let Some(policy) = spec.preemption_policy.filter(|p| *p != resolved.policy) {
            return Err(refuse(
                "preemptionPolicy",
                format!(
                    "{policy:?} disagrees with {} ({:?}): leave it unset",
                    source(&resolved.class),
                    resolved.policy
                ),
            ));
        }
        spec.priority_class_name = resolved.class;
        spec.priority = Some(resolved.value);
        spec.preemption_policy = Some(resolved.policy);
        Ok(())
    }

    /// The class `spec` names, or the global default one.
    async fn resolve(
        &self,
        index: usize,
        spec: &PodSpec,
        classes: &mut Classes,
    ) -> Result<Resolved, ApiError> {
        let classes = match &mut classes.0 {
            Some(classes) => classes,
            unread => {
                let (objects, _) = self.list_objects(Kind::PriorityClass, None).await?;
                unread.insert(
                    objects
                        .into_iter()
                        .filter_map(|o| PriorityClass::try_from(o).ok())
                        .collect(),
                )
            }
        };
        let class = match &spec.priority_class_name {
            Some(name) => {
                let Some(class) = classes.iter().find(|c| c.metadata.name == *name) else {
                    return Err(ApiError::invalid(
                        index,
                        FieldErrors::one(
                            "spec.priorityClassName",
                            format!("no PriorityClass named {name:?} was found"),
                        ),
                    ));
                };
                Some(class)
            }
            None => classes.iter().find(|c| c.global_default == Some(true)),
        };
        Ok(match class {
            Some(class) => Resolved {
                value: class.value.unwrap_or(0),
                policy: class.preemption_policy.unwrap_or_default(),
                class: Some(class.metadata.name.clone()),
            },
            None => Resolved {
                class: None,
                value: 0,
                policy: PreemptionPolicy::default(),
            },
        })
    }
}

/// Where a pod's priority comes from, for messages.
fn source(class: &Option<String>) -> String {
    match class {
        Some(name) => format!("the PriorityClass {name:?}"),
        None => "the default priority (no PriorityClass is the global default)".into(),
    }
}
