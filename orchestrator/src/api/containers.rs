//! Which container of a pod a `logs` or `exec` request means, by kubectl's rules
//! (the pod's only container when none is named) and with its messages, and what
//! this node knows of it from the pod's record.

use crate::model::{Kind, Object};
use crate::runtime::logs::ContainerLogs;
use crate::runtime::node::NodeHandle;
use crate::runtime::record::{ContainerRecord, PodRecord};

use super::registry::{ApiError, ObjectRef, Registry};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(
        "a container name must be specified for pod {pod}, choose one of: {}{}",
        list(.containers),
        if .init_containers.is_empty() { String::new() } else {
            format!(" or one of the init containers: {}", list(.init_containers))
        }
    )]
    Unnamed {
        pod: String,
        containers: Vec<String>,
        init_containers: Vec<String>,
    },
    #[error("container {container} is not valid for pod {pod}: choose one of: {}", list(.containers))]
    Unknown {
        pod: String,
        container: String,
        containers: Vec<String>,
    },
    #[error("pod {pod} does not have a host assigned")]
    Unscheduled { pod: String },
    #[error("pod {pod} runs on node {node}, not on this node ({this}): ask that node's API")]
    Elsewhere {
        pod: String,
        node: String,
        this: String,
    },
    #[error("container \"{container}\" in pod \"{pod}\" is waiting to start: {reason}")]
    Waiting {
        pod: String,
        container: String,
        reason: String,
    },
    #[error("previous terminated container \"{container}\" in pod \"{pod}\" not found")]
    NoPrevious { pod: String, container: String },
    #[error("container \"{container}\" in pod \"{pod}\" is not running")]
    NotRunning { pod: String, container: String },
}

/// Names as kubectl (Go) prints a list: `[a b]`.
fn list(names: &[String]) -> String {
    format!("[{}]", names.join(" "))
}

/// A container of a pod bound to this node.
#[derive(Debug, Clone)]
pub struct NodeContainer {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub name: String,
    /// What the node did with it; None before it did anything.
    record: Option<ContainerRecord>,
}

/// The container `container` (empty: the only one) of pod `namespace/pod`, which
/// must be bound to this node.
pub async fn find(
    registry: &Registry,
    node: &NodeHandle,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<NodeContainer, ContainerError> {
    let reference = ObjectRef {
        kind: Kind::Pod,
        namespace: Some(
            if namespace.is_empty() {
                "default"
            } else {
                namespace
            }
            .to_string(),
        ),
        name: pod.to_string(),
    };
    let value = registry.get(&reference).await?;
    let Ok(Object::Pod(object)) = Object::decode_stored(value) else {
        return Err(ApiError::Corrupt {
            key: reference.key(),
            reason: "not a pod".into(),
        }
        .into());
    };
    let names = |containers: &[crate::model::Container]| -> Vec<String> {
        containers.iter().map(|c| c.name.clone()).collect()
    };
    let (containers, init_containers) = (
        names(&object.spec.containers),
        names(&object.spec.init_containers),
    );
    let name = match (container, containers.as_slice()) {
        ("", [only]) => only.clone(),
        ("", _) => {
            return Err(ContainerError::Unnamed {
                pod: pod.into(),
                containers,
                init_containers,
            });
        }
        (named, _)
            if containers
                .iter()
                .chain(&init_containers)
                .any(|c| c == named) =>
        {
            named.to_string()
        }
        (named, _) => {
            return Err(ContainerError::Unknown {
                pod: pod.into(),
                container: named.into(),
                containers: containers.into_iter().chain(init_containers).collect(),
            });
        }
    };
    match object.spec.node_name {
        None => return Err(ContainerError::Unscheduled { pod: pod.into() }),
        Some(bound) if bound != node.name => {
            return Err(ContainerError::Elsewhere {
                pod: pod.into(),
                node: bound,
                this: node.name.clone(),
            });
        }
        Some(_) => {}
    }
    let uid = object.metadata.uid.unwrap_or_default();
    let record =
        PodRecord::load(&node.paths.record(&uid)).and_then(|mut r| r.containers.remove(&name));
    Ok(NodeContainer {
        namespace: reference.namespace.unwrap_or_default(),
        pod: pod.into(),
        uid,
        name,
        record,
    })
}

impl NodeContainer {
    /// The attempt whose log to read: the current (or last) one, or with
    /// `previous` the one before it.
    pub fn log_attempt(&self, previous: bool) -> Result<u32, ContainerError> {
        let started = self.record.as_ref().filter(|r| r.attempt > 0);
        match started {
            Some(record) if !previous => Ok(record.attempt),
            Some(record) if record.last_terminated.is_some() && record.attempt > 1 => {
                Ok(record.attempt - 1)
            }
            _ if previous => Err(ContainerError::NoPrevious {
                pod: self.pod.clone(),
                container: self.name.clone(),
            }),
            _ => Err(ContainerError::Waiting {
                pod: self.pod.clone(),
                container: self.name.clone(),
                reason: self
                    .record
                    .as_ref()
                    .and_then(|r| r.waiting.as_ref())
                    .map_or_else(|| "ContainerCreating".into(), |w| w.reason.clone()),
            }),
        }
    }

    /// The runc ID of the running attempt.
    pub fn running_id(&self) -> Result<String, ContainerError> {
        self.record
            .as_ref()
            .and_then(|r| r.running.as_ref())
            .map(|running| running.id.clone())
            .ok_or_else(|| ContainerError::NotRunning {
                pod: self.pod.clone(),
                container: self.name.clone(),
            })
    }

    pub fn logs(&self, node: &NodeHandle) -> ContainerLogs {
        ContainerLogs {
            paths: node.paths.clone(),
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            uid: self.uid.clone(),
            container: self.name.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::record::{Running, Terminated, Waiting};

    fn container(record: Option<ContainerRecord>) -> NodeContainer {
        NodeContainer {
            namespace: "default".into(),
            pod: "p".into(),
            uid: "u".into(),
            name: "c".into(),
            record,
        }
    }

    fn terminated() -> Terminated {
        Terminated {
            id: "u-c-1".into(),
            exit_code: 1,
            reason: "Error".into(),
            message: None,
            started_at: None,
            finished_at: "2026-11-22T05:55:20Z".into(),
        }
    }

    #[test]
    fn log_attempts() {
        let waiting = container(Some(ContainerRecord {
            waiting: Some(Waiting {
                reason: "ErrImagePull".into(),
                message: None,
            }),
            ..ContainerRecord::default()
        }));
        assert_eq!(
            waiting.log_attempt(false).unwrap_err().to_string(),
            "container \"c\" in pod \"p\" is waiting to start: ErrImagePull"
        );
        assert_eq!(
            container(None).log_attempt(false).unwrap_err().to_string(),
            "container \"c\" in pod \"p\" is waiting to start: ContainerCreating"
        );
        let first = container(Some(ContainerRecord {
            attempt: 1,
            running: Some(Running {
                id: "u-c-1".into(),
                started_at: String::new(),
                started_unix: 0,
            }),
            ..ContainerRecord::default()
        }));
        assert_eq!(first.log_attempt(false).unwrap(), 1);
        assert_eq!(first.running_id().unwrap(), "u-c-1");
        assert_eq!(
            first.log_attempt(true).unwrap_err().to_string(),
            "previous terminated container \"c\" in pod \"p\" not found"
        );
        let restarted = container(Some(ContainerRecord {
            attempt: 3,
            terminated: Some(terminated()),
            last_terminated: Some(terminated()),
            ..ContainerRecord::default()
        }));
        assert_eq!(restarted.log_attempt(false).unwrap(), 3);
        assert_eq!(restarted.log_attempt(true).unwrap(), 2);
        assert_eq!(
            restarted.running_id().unwrap_err().to_string(),
            "container \"c\" in pod \"p\" is not running"
        );
    }

    #[test]
    fn messages_list_the_containers_as_kubectl_does() {
        let unnamed = ContainerError::Unnamed {
            pod: "multi".into(),
            containers: vec!["a".into(), "b".into()],
            init_containers: Vec::new(),
        };
        assert_eq!(
            unnamed.to_string(),
            "a container name must be specified for pod multi, choose one of: [a b]"
        );
        let with_init = ContainerError::Unnamed {
            pod: "multi".into(),
            containers: vec!["a".into(), "b".into()],
            init_containers: vec!["setup".into()],
        };
        assert!(
            with_init
                .to_string()
                .ends_with("choose one of: [a b] or one of the init containers: [setup]")
        );
    }
}
