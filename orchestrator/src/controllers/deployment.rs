//! The Deployment controller: one ReplicaSet per pod template (named
//! `<deployment>-<template hash>`, selecting and labelling its pods with
//! `pod-template-hash`), rolled from the old ones to the new one with the
//! RollingUpdate strategy (maxSurge / maxUnavailable, see [`super::rollout`]) or
//! Recreate (old pods gone before new ones start). Revisions are annotated
//! (`deployment.kubernetes.io/revision`) on the ReplicaSets and the Deployment; idle
//! old ReplicaSets beyond revisionHistoryLimit are deleted. A paused Deployment is
//! left as it is.
//!
//! Progress: the Progressing condition's lastUpdateTime moves whenever the rollout
//! moves; a rollout that has not completed progressDeadlineSeconds after it last
//! moved gets Progressing=False, reason ProgressDeadlineExceeded. Then, unless the
//! Deployment has the annotation `skiff.io/auto-rollback: "false"`, the controller
//! rolls it back to the newest revision that once completed (annotated
//! `skiff.io/rollout-complete` on its ReplicaSet): the Deployment's template becomes
//! that revision's, a RolledBack condition and a Warning event say so, and the
//! annotation `skiff.io/rolled-back-generation` names the generation that failed. Old pods
//! only go as new ones become available, so a broken release never takes the
//! service down.

use std::time::Duration;

use async_trait::async_trait;

use super::pods::now_seconds;
use super::rollout::{
    self, Counts, REVISION_ANNOTATION, TEMPLATE_HASH_LABEL, deployment_template, revision,
};
use super::{
    Action, Cache, Context, Error, Reconciler, controlled_by, controller_owner, namespace_of,
    owner_reference,
};
use crate::api::registry::{ObjectRef, now};
use crate::model::{
    Condition, ConditionStatus, Deployment, DeploymentStatus, DeploymentStrategyType, Kind, Object,
    ObjectMeta, Pod, ReplicaSet, ReplicaSetSpec,
};
use crate::runtime::events::Type;

/// Set to "false" on a Deployment to keep a failed rollout where it is.
pub const AUTO_ROLLBACK_ANNOTATION: &str = "skiff.io/auto-rollback";
/// Set on a ReplicaSet once a rollout to it completed: a revision to roll back to.
pub const COMPLETE_ANNOTATION: &str = "skiff.io/rollout-complete";
/// Set by an automatic rollback: the generation (spec) it rolled back from, so
/// `rollout status` of that generation knows it failed.
pub const ROLLED_BACK_GENERATION_ANNOTATION: &str = "skiff.io/rolled-back-generation";
/// The condition recording the last automatic rollback.
pub const ROLLED_BACK: &str = "RolledBack";
pub const PROGRESSING: &str = "Progressing";
pub const AVAILABLE: &str = "Available";
pub const DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
pub const COMPLETED: &str = "NewReplicaSetAvailable";

pub struct DeploymentController;

/// Whether `rs` was stamped from `deployment`'s current template.
fn is_current(rs: &ReplicaSet, deployment: &Deployment) -> bool {
    deployment_template(rs) == deployment.spec.template
}

/// The ReplicaSet for the deployment's template, with no replicas yet.
fn new_replica_set(deployment: &Deployment, revision: i64) -> ReplicaSet {
    let hash = rollout::template_hash(&deployment.spec.template);
    let mut template = deployment.spec.template.clone();
    template
        .metadata
        .labels
        .insert(TEMPLATE_HASH_LABEL.into(), hash.clone());
    let mut selector = deployment.spec.selector.clone();
    selector
        .match_labels
        .insert(TEMPLATE_HASH_LABEL.into(), hash.clone());
    let mut labels = deployment.spec.template.metadata.labels.clone();
    labels.insert(TEMPLATE_HASH_LABEL.into(), hash.clone());
    ReplicaSet {
        metadata: ObjectMeta {
            name: format!("{}-{hash}", deployment.metadata.name),
            namespace: Some(namespace_of(&deployment.metadata).to_string()),
            labels,
            annotations: [(REVISION_ANNOTATION.to_string(), revision.to_string())].into(),
            owner_references: vec![owner_reference(Kind::Deployment, &deployment.metadata)],
            ..Default::default()
        },
        spec: ReplicaSetSpec {
            replicas: Some(0),
            selector,
            template,
            min_ready_seconds: deployment.spec.min_ready_seconds,
        },
        status: Default::default(),
    }
}

/// Sets condition `kind` in `conditions`: the transition time moves when the status
/// does, the update time when `moved` or the reason changes.
fn set_condition(
    conditions: &mut Vec<Condition>,
    kind: &str,
    status: ConditionStatus,
    reason: &str,
    message: String,
    moved: bool,
) {
    let stamp = now();
    let previous = conditions.iter().position(|c| c.r#type == kind);
    let mut condition = Condition {
        r#type: kind.into(),
        status,
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(stamp.clone()),
        last_update_time: Some(stamp),
        ..Default::default()
    };
    if let Some(i) = previous {
        let old = &conditions[i];
        if old.status == status {
            condition.last_transition_time = old.last_transition_time.clone();
            if !moved && old.reason.as_deref() == Some(reason) {
                condition.last_update_time = old.last_update_time.clone();
            }
        }
        conditions[i] = condition;
    } else {
        conditions.push(condition);
    }
}

fn condition<'a>(conditions: &'a [Condition], kind: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.r#type == kind)
}

/// What reconciling one Deployment found and did, for its status.
struct Observed<'a> {
    deployment: &'a Deployment,
    new: Option<&'a ReplicaSet>,
    all: Vec<&'a ReplicaSet>,
    /// Whether this pass created or scaled a ReplicaSet.
    scaled: bool,
}

impl Observed<'_> {
    fn status(&self, max_unavailable: i32) -> DeploymentStatus {
        let d = self.deployment;
        let desired = d.spec.replicas.unwrap_or(1);
        let sum = |f: fn(&ReplicaSet) -> Option<i32>| -> i32 {
            self.all.iter().map(|rs| f(rs).unwrap_or(0)).sum()
        };
        let replicas = sum(|rs| rs.status.replicas);
        let available = sum(|rs| rs.status.available_replicas);
        let updated = self.new.map_or(0, |rs| rs.status.replicas.unwrap_or(0));
        let mut conditions = d.status.conditions.clone();
        let (status, reason) = if available >= desired - max_unavailable {
            (ConditionStatus::True, "MinimumReplicasAvailable")
        } else {
            (ConditionStatus::False, "MinimumReplicasUnavailable")
        };
        let message = if status == ConditionStatus::True {
            "Deployment has minimum availability."
        } else {
            "Deployment does not have minimum availability."
        };
        set_condition(
            &mut conditions,
            AVAILABLE,
            status,
            reason,
            message.into(),
            false,
        );
        DeploymentStatus {
            observed_generation: d.metadata.generation,
            replicas: Some(replicas),
            updated_replicas: Some(updated),
            ready_replicas: Some(sum(|rs| rs.status.ready_replicas)),
            available_replicas: Some(available),
            unavailable_replicas: Some((desired - available).max(0)),
            conditions,
            collision_count: d.status.collision_count,
        }
    }

    /// Complete: every desired replica is updated and available, and no old pod is left.
    fn complete(&self, status: &DeploymentStatus) -> bool {
        let desired = self.deployment.spec.replicas.unwrap_or(1);
        let new = self
            .new
            .map(|rs| (rs.spec.replicas, rs.status.available_replicas));
        status.updated_replicas == Some(desired)
            && status.replicas == Some(desired)
            && status.available_replicas == Some(desired)
            && new == Some((Some(desired), Some(desired)))
    }

    /// Whether the counts moved since the stored status.
    fn moved(&self, status: &DeploymentStatus) -> bool {
        let old = &self.deployment.status;
        self.scaled
            || (
                old.replicas,
                old.updated_replicas,
                old.ready_replicas,
                old.available_replicas,
            ) != (
                status.replicas,
                status.updated_replicas,
                status.ready_replicas,
                status.available_replicas,
            )
    }
}

impl DeploymentController {
    /// Sets `rs`'s replicas (and minReadySeconds), recording the scaling.
    async fn scale(
        &self,
        ctx: &Context,
        deployment: &Deployment,
        rs: &mut ReplicaSet,
        replicas: i32,
    ) -> Result<bool, Error> {
        let min_ready = deployment.spec.min_ready_seconds;
        let before = rs.spec.replicas.unwrap_or(0);
        if before == replicas && rs.spec.min_ready_seconds == min_ready {
            return Ok(false);
        }
        let mut scaled = rs.clone();
        scaled.spec.replicas = Some(replicas);
        scaled.spec.min_ready_seconds = min_ready;
        *rs = ctx.apply(scaled.into()).await?;
        if before != replicas {
            let verb = if replicas > before { "up" } else { "down" };
            let message = format!(
                "Scaled {verb} replica set {} from {before} to {replicas}",
                rs.metadata.name
            );
            ctx.event(
                Kind::Deployment,
                &deployment.metadata,
                Type::Normal,
                "ScalingReplicaSet",
                &message,
            )
            .await;
        }
        Ok(before != replicas)
    }

    /// Whether pods of the ReplicaSets `old` still exist (running or terminating).
    async fn old_pods_remain(
        &self,
        ctx: &Context,
        deployment: &Deployment,
        old: &[ReplicaSet],
    ) -> Result<bool, Error> {
        let pods: Vec<Pod> = ctx
            .list(Kind::Pod, namespace_of(&deployment.metadata))
            .await?;
        Ok(pods.iter().any(|p| {
            !super::pods::is_finished(p)
                && old
                    .iter()
                    .any(|rs| controlled_by(&p.metadata, rs.metadata.uid.as_deref()))
        }))
    }

    /// Rolls `deployment` back to the newest completed revision other than the
    /// failed one; returns the revision it went back to.
    async fn roll_back(
        &self,
        ctx: &Context,
        deployment: &Deployment,
        failed: &ReplicaSet,
        old: &[ReplicaSet],
    ) -> Result<Option<i64>, Error> {
        let Some(target) = old
            .iter()
            .filter(|rs| rs.metadata.annotations.contains_key(COMPLETE_ANNOTATION))
            .filter(|rs| !is_current(rs, deployment))
            .max_by_key(|rs| revision(rs))
        else {
            return Ok(None);
        };
        let mut rolled = deployment.clone();
        rolled.spec.template = deployment_template(target);
        rolled.metadata.annotations.insert(
            ROLLED_BACK_GENERATION_ANNOTATION.into(),
            deployment.metadata.generation.unwrap_or(0).to_string(),
        );
        ctx.apply::<Deployment>(rolled.into()).await?;
        let message = format!(
            "Rolled back from revision {} to revision {}: the rollout made no progress for {}s (progressDeadlineSeconds)",
            revision(failed),
            revision(target),
            deployment.spec.progress_deadline_seconds.unwrap_or(600)
        );
        ctx.event(
            Kind::Deployment,
            &deployment.metadata,
            Type::Warning,
            ROLLED_BACK,
            &message,
        )
        .await;
        Ok(Some(revision(target)))
    }
}

#[async_trait]
impl Reconciler for DeploymentController {
    const NAME: &'static str = "deployment-controller";
    const KIND: Kind = Kind::Deployment;
    const RELATED: &'static [Kind] = &[Kind::ReplicaSet, Kind::Pod];

    /// A ReplicaSet concerns its Deployment; a pod, its ReplicaSet's Deployment
    /// (Recreate waits for old pods to go).
    fn owners_of(&self, object: &Object, cache: &Cache) -> Vec<ObjectRef> {
        match object {
            Object::Pod(_) => controller_owner(object, Kind::ReplicaSet)
                .and_then(|rs| cache.get(&rs))
                .and_then(|rs| controller_owner(rs, Kind::Deployment))
                .into_iter()
                .collect(),
            other => controller_owner(other, Kind::Deployment)
                .into_iter()
                .collect(),
        }
    }

    async fn reconcile(&self, object: &Object, ctx: &Context) -> Result<Action, Error> {
        let Ok(deployment) = Deployment::try_from(object.clone()) else {
            return Ok(Action::await_change());
        };
        if deployment.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let namespace = namespace_of(&deployment.metadata);
        let all: Vec<ReplicaSet> = ctx.list(Kind::ReplicaSet, namespace).await?;
        let uid = deployment.metadata.uid.as_deref();
        let mut owned: Vec<ReplicaSet> = all
            .into_iter()
            .filter(|rs| controlled_by(&rs.metadata, uid))
            .collect();
        owned.sort_by_key(revision);
        let newest = owned.iter().map(revision).max().unwrap_or(0);
        let desired = deployment.spec.replicas.unwrap_or(1);
        let (max_surge, max_unavailable) =
            rollout::surge_and_unavailable(&deployment.spec, desired);
        let paused = deployment.spec.paused == Some(true);

        let mut scaled = false;
        let position = owned.iter().position(|rs| is_current(rs, &deployment));
        let mut new = match position {
            Some(i) => Some(owned.remove(i)),
            None if paused => None,
            None => {
                let created: ReplicaSet = ctx
                    .apply(new_replica_set(&deployment, newest + 1).into())
                    .await?;
                scaled = true;
                Some(created)
            }
        };
        let mut old = owned;
        // An old template made current again (undo, rollback) is the newest revision.
        if let Some(rs) = new.as_mut().filter(|rs| revision(rs) < newest) {
            let mut bumped = rs.clone();
            bumped
                .metadata
                .annotations
                .insert(REVISION_ANNOTATION.into(), (newest + 1).to_string());
            *rs = ctx.apply(bumped.into()).await?;
        }

        if let (Some(new), false) = (new.as_mut(), paused) {
            let recreate = deployment.spec.strategy.as_ref().and_then(|s| s.r#type)
                == Some(DeploymentStrategyType::Recreate);
            if recreate {
                for rs in &mut old {
                    scaled |= self.scale(ctx, &deployment, rs, 0).await?;
                }
                if !self.old_pods_remain(ctx, &deployment, &old).await? {
                    scaled |= self.scale(ctx, &deployment, new, desired).await?;
                }
            } else {
                let old_total: i32 = old.iter().map(|rs| rs.spec.replicas.unwrap_or(0)).sum();
                let current = new.spec.replicas.unwrap_or(0);
                let target = rollout::new_replicas(desired, max_surge, current, old_total);
                scaled |= self.scale(ctx, &deployment, new, target).await?;
                let counts: Vec<Counts> = old.iter().map(Counts::of).collect();
                let targets =
                    rollout::old_replicas(desired, max_unavailable, Counts::of(new), &counts);
                for (rs, target) in old.iter_mut().zip(targets) {
                    scaled |= self.scale(ctx, &deployment, rs, target).await?;
                }
            }
        }

        let limit = deployment.spec.revision_history_limit.unwrap_or(10);
        let old_refs: Vec<&ReplicaSet> = old.iter().collect();
        for name in rollout::beyond_history(&old_refs, limit) {
            if let Some(rs) = old.iter().find(|rs| rs.metadata.name == name) {
                ctx.delete(Kind::ReplicaSet, &rs.metadata).await?;
            }
        }

        let observed = Observed {
            deployment: &deployment,
            new: new.as_ref(),
            all: new.iter().chain(old.iter()).collect(),
            scaled,
        };
        let mut status = observed.status(max_unavailable);
        let complete = observed.complete(&status);
        let moved = observed.moved(&status);
        let deadline = i64::from(deployment.spec.progress_deadline_seconds.unwrap_or(600));
        let mut action = Action::await_change();
        let new_name = new
            .as_ref()
            .map_or_else(String::new, |rs| rs.metadata.name.clone());
        if paused {
            set_condition(
                &mut status.conditions,
                PROGRESSING,
                ConditionStatus::Unknown,
                "DeploymentPaused",
                "Deployment is paused".into(),
                false,
            );
        } else if complete {
            set_condition(
                &mut status.conditions,
                PROGRESSING,
                ConditionStatus::True,
                COMPLETED,
                format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                moved,
            );
            if let Some(rs) = new
                .as_ref()
                .filter(|rs| !rs.metadata.annotations.contains_key(COMPLETE_ANNOTATION))
            {
                let mut marked = rs.clone();
                marked
                    .metadata
                    .annotations
                    .insert(COMPLETE_ANNOTATION.into(), "true".into());
                ctx.apply::<ReplicaSet>(marked.into()).await?;
            }
        } else {
            let progressing = condition(&status.conditions, PROGRESSING);
            let exceeded =
                progressing.is_some_and(|c| c.reason.as_deref() == Some(DEADLINE_EXCEEDED));
            let last_moved = progressing
                .filter(|c| c.status == ConditionStatus::True)
                .and_then(|c| super::pods::seconds(c.last_update_time.as_deref()));
            let now = now_seconds();
            match last_moved {
                Some(at) if !moved && now - at > deadline && !exceeded => {
                    set_condition(
                        &mut status.conditions,
                        PROGRESSING,
                        ConditionStatus::False,
                        DEADLINE_EXCEEDED,
                        format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                        true,
                    );
                    let automatic = deployment
                        .metadata
                        .annotations
                        .get(AUTO_ROLLBACK_ANNOTATION)
                        .map(String::as_str)
                        != Some("false");
                    if let (true, Some(failed)) = (automatic, new.as_ref())
                        && let Some(target) = self.roll_back(ctx, &deployment, failed, &old).await?
                    {
                        set_condition(
                            &mut status.conditions,
                            ROLLED_BACK,
                            ConditionStatus::True,
                            DEADLINE_EXCEEDED,
                            format!(
                                "Rolled back from revision {} to revision {target}",
                                revision(failed)
                            ),
                            true,
                        );
                        // The way back is a rollout of its own, with its own deadline.
                        set_condition(
                            &mut status.conditions,
                            PROGRESSING,
                            ConditionStatus::True,
                            "DeploymentRollback",
                            format!("Rolling back to revision {target}"),
                            true,
                        );
                    }
                }
                _ if exceeded && !moved => {}
                Some(at) if !moved => {
                    let due = (at + deadline + 1 - now).max(1);
                    action = Action::requeue(Duration::from_secs(due.unsigned_abs()));
                }
                _ => {
                    let reason = if scaled {
                        "ReplicaSetUpdated"
                    } else {
                        "FoundNewReplicaSet"
                    };
                    set_condition(
                        &mut status.conditions,
                        PROGRESSING,
                        ConditionStatus::True,
                        reason,
                        format!("ReplicaSet \"{new_name}\" is progressing."),
                        true,
                    );
                    action = Action::requeue(Duration::from_secs((deadline + 1).unsigned_abs()));
                }
            }
        }

        // The Deployment's revision is its new ReplicaSet's.
        let current_revision = new.as_ref().map(revision).filter(|r| *r > 0);
        let fresh: Deployment = match current_revision {
            Some(r)
                if deployment.metadata.annotations.get(REVISION_ANNOTATION)
                    != Some(&r.to_string()) =>
            {
                let mut annotated = deployment.clone();
                annotated
                    .metadata
                    .annotations
                    .insert(REVISION_ANNOTATION.into(), r.to_string());
                match ctx.apply(annotated.into()).await {
                    Ok(d) => d,
                    // Changed meanwhile (a rollback above, a user): that change brings
                    // another pass, which sets it.
                    Err(e) => {
                        log::debug!("{}: {e}; the next pass annotates the revision", Self::NAME);
                        deployment.clone()
                    }
                }
            }
            _ => deployment.clone(),
        };
        let mut updated = fresh;
        updated.metadata.resource_version = None;
        updated.status = status;
        ctx.update_status(updated.into()).await?;
        Ok(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PodTemplateSpec;

    #[test]
    fn a_new_replicaset_selects_its_template_by_hash_and_is_owned() {
        let mut d = Deployment::default();
        d.metadata.name = "web".into();
        d.metadata.uid = Some("d-uid".into());
        d.spec
            .selector
            .match_labels
            .insert("app".into(), "web".into());
        d.spec.template = PodTemplateSpec::default();
        d.spec
            .template
            .metadata
            .labels
            .insert("app".into(), "web".into());
        let rs = new_replica_set(&d, 3);
        let hash = rollout::template_hash(&d.spec.template);
        assert_eq!(rs.metadata.name, format!("web-{hash}"));
        assert_eq!(rs.spec.selector.match_labels[TEMPLATE_HASH_LABEL], hash);
        assert_eq!(rs.spec.template.metadata.labels[TEMPLATE_HASH_LABEL], hash);
        assert_eq!(rs.metadata.annotations[REVISION_ANNOTATION], "3");
        assert_eq!(revision(&rs), 3);
        assert_eq!(rs.metadata.owner_references[0].uid, "d-uid");
        assert!(is_current(&rs, &d));
        d.spec
            .template
            .metadata
            .labels
            .insert("v".into(), "2".into());
        assert!(!is_current(&rs, &d));
    }

    #[test]
    fn conditions_keep_their_times_unless_they_change() {
        let mut conditions = vec![Condition {
            r#type: PROGRESSING.into(),
            status: ConditionStatus::True,
            reason: Some("ReplicaSetUpdated".into()),
            last_transition_time: Some("2020-01-01T00:00:00Z".into()),
            last_update_time: Some("2020-01-01T00:00:00Z".into()),
            ..Default::default()
        }];
        set_condition(
            &mut conditions,
            PROGRESSING,
            ConditionStatus::True,
            "ReplicaSetUpdated",
            "m".into(),
            false,
        );
        assert_eq!(
            conditions[0].last_update_time.as_deref(),
            Some("2020-01-01T00:00:00Z")
        );
        set_condition(
            &mut conditions,
            PROGRESSING,
            ConditionStatus::True,
            "ReplicaSetUpdated",
            "m".into(),
            true,
        );
        assert_ne!(
            conditions[0].last_update_time.as_deref(),
            Some("2020-01-01T00:00:00Z")
        );
        assert_eq!(
            conditions[0].last_transition_time.as_deref(),
            Some("2020-01-01T00:00:00Z")
        );
        set_condition(
            &mut conditions,
            PROGRESSING,
            ConditionStatus::False,
            DEADLINE_EXCEEDED,
            "m".into(),
            false,
        );
        assert_ne!(
            conditions[0].last_transition_time.as_deref(),
            Some("2020-01-01T00:00:00Z")
        );
        assert_eq!(conditions.len(), 1);
    }
}
