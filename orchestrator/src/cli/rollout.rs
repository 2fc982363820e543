//! `skiff rollout status|history|undo|pause|resume` and `skiff scale`: the
//! Deployment's revisions are its ReplicaSets (see [`crate::controllers::deployment`]);
//! these commands read them and write the Deployment's spec, as kubectl does.

use std::time::{Duration, Instant};

use clap::Subcommand;
use serde_json::Value;

use super::{CliError, get_one, json_bytes};
use crate::api::client::{self, ApiClient};
use crate::api::proto;
use crate::api::registry::typed::decode_as;
use crate::cli::config::Settings;
use crate::controllers::deployment::{
    COMPLETED, DEADLINE_EXCEEDED, PROGRESSING, ROLLED_BACK, ROLLED_BACK_GENERATION_ANNOTATION,
};
use crate::controllers::rollout::{REVISION_ANNOTATION, deployment_template, revision};
use crate::controllers::{controlled_by, namespace_of};
use crate::model::{Deployment, Kind, ReplicaSet};

/// How often `rollout status` looks again.
const POLL: Duration = Duration::from_millis(500);

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Wait until the rollout completes (exit 0) or fails (exit 1)
    Status {
        /// deployment/NAME, or deployment NAME
        target: String,
        name: Option<String>,
        /// Give up after this long (e.g. 2m)
        #[arg(long, value_parser = super::parse_duration)]
        timeout: Option<Duration>,
    },
    /// List the revisions
    History {
        target: String,
        name: Option<String>,
    },
    /// Go back to the previous revision, or to --to-revision
    Undo {
        target: String,
        name: Option<String>,
        /// The revision to go back to (0: the previous one)
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        to_revision: i64,
    },
    /// Stop rolling out template changes
    Pause {
        target: String,
        name: Option<String>,
    },
    /// Roll out template changes again
    Resume {
        target: String,
        name: Option<String>,
    },
}

/// `kind/NAME` or `kind NAME`, of one of `kinds`.
fn target(text: &str, name: Option<String>, kinds: &[Kind]) -> Result<(Kind, String), CliError> {
    let (kind_text, name) = match (text.split_once('/'), name) {
        (Some((kind, name)), None) => (kind, name.to_string()),
        (None, Some(name)) => (text, name),
        (Some(_), Some(extra)) => {
            return Err(CliError::Usage(format!(
                "unexpected argument {extra:?} after {text:?}"
            )));
        }
        (None, None) => {
            return Err(CliError::Usage(format!(
                "expected KIND/NAME or KIND NAME, got {text:?}"
            )));
        }
    };
    let supported = || {
        kinds
            .iter()
            .map(|k| k.name().to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let kind = Kind::from_cli_name(kind_text)
        .filter(|k| kinds.contains(k))
        .ok_or_else(|| {
            CliError::Usage(format!(
                "{kind_text:?} is not supported here (supported: {})",
                supported()
            ))
        })?;
    if name.is_empty() {
        return Err(CliError::Usage("a name is required".into()));
    }
    Ok((kind, name))
}

/// "deployment.apps/web".
fn display(kind: Kind, name: &str) -> String {
    match kind.group() {
        "" => format!("{}/{name}", kind.name().to_ascii_lowercase()),
        group => format!("{}.{group}/{name}", kind.name().to_ascii_lowercase()),
    }
}

async fn deployment(
    client: &mut ApiClient,
    namespace: &str,
    name: &str,
) -> Result<Deployment, CliError> {
    let value = get_one(client, Kind::Deployment, namespace, name).await?;
    decode_as(value).ok_or_else(|| CliError::Usage(format!("deployment {name:?} is unreadable")))
}

/// The ReplicaSets of `deployment`, oldest revision first.
async fn revisions(
    client: &mut ApiClient,
    deployment: &Deployment,
) -> Result<Vec<ReplicaSet>, CliError> {
    let listed = client
        .list(proto::ListRequest {
            kind: Kind::ReplicaSet.name().into(),
            namespace: namespace_of(&deployment.metadata).into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let uid = deployment.metadata.uid.as_deref();
    let mut owned: Vec<ReplicaSet> = listed
        .objects
        .iter()
        .filter_map(|o| serde_json::from_slice::<Value>(o).ok())
        .filter_map(decode_as::<ReplicaSet>)
        .filter(|rs| controlled_by(&rs.metadata, uid))
        .collect();
    owned.sort_by_key(revision);
    Ok(owned)
}

async fn write(client: &mut ApiClient, object: Value) -> Result<(), CliError> {
    client
        .apply(proto::ApplyRequest {
            objects: vec![json_bytes(&object)],
        })
        .await?;
    Ok(())
}

/// Where a rollout is.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    Waiting(String),
    Done(String),
    Failed(String),
}

/// kubectl's rollout status messages for `d`, whose rollout of generation `watched`
/// is followed: an automatic rollback from that generation (or a later one) is its
/// failure.
pub fn progress(d: &Deployment, watched: i64) -> Progress {
    let name = &d.metadata.name;
    let status = &d.status;
    let condition = |kind: &str| status.conditions.iter().find(|c| c.r#type == kind);
    let rolled_back_from = d
        .metadata
        .annotations
        .get(ROLLED_BACK_GENERATION_ANNOTATION)
        .and_then(|g| g.parse::<i64>().ok());
    if rolled_back_from.is_some_and(|g| g >= watched) {
        let message = condition(ROLLED_BACK)
            .and_then(|c| c.message.clone())
            .unwrap_or_default();
        return Progress::Failed(format!(
            "deployment {name:?} was rolled back automatically: {message}"
        ));
    }
    if condition(PROGRESSING).is_some_and(|c| c.reason.as_deref() == Some(DEADLINE_EXCEEDED)) {
        return Progress::Failed(format!(
            "deployment {name:?} exceeded its progress deadline"
        ));
    }
    if status.observed_generation < d.metadata.generation {
        return Progress::Waiting("Waiting for deployment spec update to be observed...".into());
    }
    let desired = d.spec.replicas.unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < desired {
        return Progress::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {updated} out of {desired} new replicas have been updated..."
        ));
    }
    if replicas > updated {
        return Progress::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
            replicas - updated
        ));
    }
    if available < updated {
        return Progress::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."
        ));
    }
    if d.spec.paused != Some(true)
        && condition(PROGRESSING).is_none_or(|c| c.reason.as_deref() != Some(COMPLETED))
    {
        return Progress::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: waiting for the controller..."
        ));
    }
    Progress::Done(format!("deployment {name:?} successfully rolled out"))
}

pub async fn rollout(settings: &Settings, command: RolloutCommand) -> Result<(), CliError> {
    let mut client = client::connect(&settings.connection).await?;
    let namespace = settings.namespace.as_str();
    let kinds = [Kind::Deployment];
    match command {
        RolloutCommand::Status {
            target: text,
            name,
            timeout,
        } => {
            let (_, name) = target(&text, name, &kinds)?;
            let started = Instant::now();
            let mut watched = None;
            let mut last = String::new();
            loop {
                let d = deployment(&mut client, namespace, &name).await?;
                let generation = *watched.get_or_insert(d.metadata.generation.unwrap_or(0));
                match progress(&d, generation) {
                    Progress::Done(message) => {
                        println!("{message}");
                        return Ok(());
                    }
                    Progress::Failed(message) => return Err(CliError::Usage(message)),
                    Progress::Waiting(message) => {
                        if message != last {
                            println!("{message}");
                            last = message;
                        }
                    }
                }
                if timeout.is_some_and(|t| started.elapsed() >= t) {
                    return Err(CliError::Usage(format!(
                        "timed out waiting for deployment {name:?} to roll out"
                    )));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        RolloutCommand::History { target: text, name } => {
            let (kind, name) = target(&text, name, &kinds)?;
            let d = deployment(&mut client, namespace, &name).await?;
            println!("{}", display(kind, &name));
            println!("{:<10} {:<30} CHANGE-CAUSE", "REVISION", "REPLICASET");
            for rs in revisions(&mut client, &d).await? {
                let cause = rs
                    .spec
                    .template
                    .metadata
                    .annotations
                    .get("kubernetes.io/change-cause")
                    .cloned()
                    .unwrap_or_else(|| "<none>".into());
                println!("{:<10} {:<30} {cause}", revision(&rs), rs.metadata.name);
            }
            Ok(())
        }
        RolloutCommand::Undo {
            target: text,
            name,
            to_revision,
        } => {
            let (kind, name) = target(&text, name, &kinds)?;
            if to_revision < 0 {
                return Err(CliError::Usage(format!(
                    "--to-revision must be 0 (the previous revision) or a revision number, got {to_revision}"
                )));
            }
            let mut d = deployment(&mut client, namespace, &name).await?;
            let history = revisions(&mut client, &d).await?;
            let current = d
                .metadata
                .annotations
                .get(REVISION_ANNOTATION)
                .and_then(|r| r.parse::<i64>().ok())
                .unwrap_or(0);
            let wanted = if to_revision == 0 {
                history
                    .iter()
                    .filter(|rs| revision(rs) < current)
                    .max_by_key(|rs| revision(rs))
            } else {
                history.iter().find(|rs| revision(rs) == to_revision)
            };
            let Some(rs) = wanted else {
                return Err(CliError::Usage(match to_revision {
                    0 => format!("no rollout history found for deployment {name:?}"),
                    n => format!(
                        "unable to find specified revision {n} in history of deployment {name:?}"
                    ),
                }));
            };
            let template = deployment_template(rs);
            if template == d.spec.template {
                println!(
                    "{} skipped rollback (current template already matches revision {})",
                    display(kind, &name),
                    revision(rs)
                );
                return Ok(());
            }
            d.spec.template = template;
            write(&mut client, crate::model::Object::from(d).to_value()).await?;
            println!("{} rolled back", display(kind, &name));
            Ok(())
        }
        RolloutCommand::Pause { target: text, name } => {
            set_paused(&mut client, namespace, &text, name, true).await
        }
        RolloutCommand::Resume { target: text, name } => {
            set_paused(&mut client, namespace, &text, name, false).await
        }
    }
}

async fn set_paused(
    client: &mut ApiClient,
    namespace: &str,
    text: &str,
    name: Option<String>,
    paused: bool,
) -> Result<(), CliError> {
    let (kind, name) = target(text, name, &[Kind::Deployment])?;
    let mut d = deployment(client, namespace, &name).await?;
    let verb = if paused { "paused" } else { "resumed" };
    if (d.spec.paused == Some(true)) == paused {
        return Err(CliError::Usage(format!(
            "{} is already {verb}",
            display(kind, &name)
        )));
    }
    d.spec.paused = Some(paused);
    write(client, crate::model::Object::from(d).to_value()).await?;
    println!("{} {verb}", display(kind, &name));
    Ok(())
}

/// `skiff scale KIND NAME --replicas N` for Deployments and ReplicaSets.
pub async fn scale(
    settings: &Settings,
    text: &str,
    name: Option<String>,
    replicas: i64,
) -> Result<(), CliError> {
    let (kind, name) = target(text, name, &[Kind::Deployment, Kind::ReplicaSet])?;
    let replicas = i32::try_from(replicas)
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--replicas must be between 0 and {}, got {replicas}",
                i32::MAX
            ))
        })?;
    let mut client = client::connect(&settings.connection).await?;
    let mut object = get_one(&mut client, kind, &settings.namespace, &name).await?;
    object["spec"]["replicas"] = replicas.into();
    write(&mut client, object).await?;
    println!("{} scaled", display(kind, &name));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Condition, ConditionStatus};

    fn deployment(replicas: i32, updated: i32, total: i32, available: i32) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.name = "web".into();
        d.metadata.generation = Some(2);
        d.spec.replicas = Some(replicas);
        d.status.observed_generation = Some(2);
        d.status.updated_replicas = Some(updated);
        d.status.replicas = Some(total);
        d.status.available_replicas = Some(available);
        d.status.conditions.push(Condition {
            r#type: PROGRESSING.into(),
            status: ConditionStatus::True,
            reason: Some(COMPLETED.into()),
            ..Default::default()
        });
        d
    }

    #[test]
    fn status_waits_for_updated_then_old_then_available_replicas() {
        let waiting = |d: &Deployment| matches!(progress(d, 0), Progress::Waiting(_));
        assert!(waiting(&deployment(3, 1, 4, 3)));
        assert!(waiting(&deployment(3, 3, 4, 3)));
        assert!(waiting(&deployment(3, 3, 3, 2)));
        assert!(matches!(
            progress(&deployment(3, 3, 3, 3), 0),
            Progress::Done(_)
        ));
        let mut unobserved = deployment(3, 3, 3, 3);
        unobserved.metadata.generation = Some(3);
        assert!(waiting(&unobserved));
    }

    #[test]
    fn status_fails_on_the_deadline_or_a_rollback_of_the_followed_generation() {
        let mut d = deployment(3, 1, 4, 3);
        d.status.conditions[0].reason = Some(DEADLINE_EXCEEDED.into());
        assert!(matches!(progress(&d, 2), Progress::Failed(_)));
        let mut d = deployment(3, 3, 3, 3);
        d.metadata.generation = Some(3);
        d.status.observed_generation = Some(3);
        d.metadata
            .annotations
            .insert(ROLLED_BACK_GENERATION_ANNOTATION.into(), "2".into());
        d.status.conditions.push(Condition {
            r#type: ROLLED_BACK.into(),
            status: ConditionStatus::True,
            message: Some("Rolled back from revision 2 to revision 1".into()),
            ..Default::default()
        });
        assert!(matches!(progress(&d, 2), Progress::Failed(m) if m.contains("revision 1")));
        assert!(
            matches!(progress(&d, 3), Progress::Done(_)),
            "the rollback's own rollout completes"
        );
    }

    #[test]
    fn targets_name_a_supported_kind() {
        let kinds = [Kind::Deployment];
        assert_eq!(
            target("deployment/web", None, &kinds).ok(),
            Some((Kind::Deployment, "web".to_string()))
        );
        assert_eq!(
            target("deploy", Some("web".into()), &kinds).ok(),
            Some((Kind::Deployment, "web".to_string()))
        );
        let error = |r: Result<(Kind, String), CliError>| {
            r.err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(error(target("pod/web", None, &kinds)).contains("\"pod\" is not supported here"));
        assert!(error(target("web", None, &kinds)).contains("expected KIND/NAME"));
        assert_eq!(display(Kind::Deployment, "web"), "deployment.apps/web");
        assert_eq!(display(Kind::ReplicaSet, "web"), "replicaset.apps/web");
    }
}
