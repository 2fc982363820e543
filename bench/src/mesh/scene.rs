//! The benchmark's node: one agent (a node in a network namespace of its own), a
//! namespace with a server pod and a client pod (busybox `sleep` containers: the
//! pods are sandboxes for skiff-bench's own processes), and a Service in front of
//! the server whose port declares `appProtocol: http`. The namespace is moved in
//! and out of the mesh by its label, as an operator would.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use skiff::api::proto;
use skiff_tests::agent::is_ready;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use super::traffic::{ClientOptions, LISTENING};
use crate::agent::{Agent, NODE_NAME};
use crate::netns::command_at;
use crate::pods::{IMAGE, import};

/// The port the server listens on in its pod.
const SERVER_PORT: u16 = 8080;
/// The Service's port, in front of [`SERVER_PORT`].
const SERVICE_PORT: u16 = 80;
/// How long pods may take to be Ready, the service to get its VIP, the server to
/// listen and the node proxy to take up or let go of the pods.
const WITHIN: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

pub struct Scene {
    // Dropped first: the server is gone before its pod and the agent.
    server: Child,
    agent: Agent,
    namespace: String,
    client_netns: PathBuf,
    pub pod_ip: IpAddr,
    pub cluster_ip: IpAddr,
    enrolled: bool,
}

impl Scene {
    /// Starts the node, imports the busybox image from `archive`, runs the pods
    /// (outside the mesh) and the server in the server pod.
    pub async fn start(skiff: &Path, archive: &Path) -> Result<Self> {
        let mut agent = Agent::start_node(skiff, "info").await?;
        import(&agent.client, archive).await?;
        let namespace = format!("mesh-bench-{}", std::process::id());
        let mut objects = vec![namespace_object(&namespace, false)];
        objects.extend(workloads(&namespace));
        agent.apply(&objects).await?;
        let server_pod = ready_pod(&agent, &namespace, "server").await?;
        let client_pod = ready_pod(&agent, &namespace, "client").await?;
        let pod_ip = server_pod["status"]["podIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .context("the server pod has no podIP")?;
        let cluster_ip = cluster_ip(&agent, &namespace).await?;
        let server_netns = agent.pod_netns(uid(&server_pod)?);
        let client_netns = agent.pod_netns(uid(&client_pod)?);
        let server = start_server(&server_netns).await?;
        Ok(Self {
            server,
            agent,
            namespace,
            client_netns,
            pod_ip,
            cluster_ip,
            enrolled: false,
        })
    }

    pub fn agent_pid(&self) -> u32 {
        self.agent.pid()
    }

    pub fn server_pid(&self) -> Result<u32> {
        self.server.id().context("the server has exited")
    }

    /// The server by its pod IP, and through the Service.
    pub fn pod_target(&self) -> SocketAddr {
        SocketAddr::new(self.pod_ip, SERVER_PORT)
    }

    pub fn service_target(&self) -> SocketAddr {
        SocketAddr::new(self.cluster_ip, SERVICE_PORT)
    }

    /// Labels the namespace into the mesh (or takes the label off), and waits
    /// until the node proxy serves both pods (or serves them no more).
    pub async fn enrol(&mut self, enrolled: bool) -> Result<()> {
        if self.enrolled == enrolled {
            return Ok(());
        }
        // Only what the agent logs from now on tells that it took up the change.
        while self.agent.log.try_recv().is_ok() {}
        self.agent
            .apply(&[namespace_object(&self.namespace, enrolled)])
            .await?;
        let logged = match enrolled {
            true => "mesh: serving pod",
            false => "mesh: no longer serving pod",
        };
        let mut awaited: Vec<String> = ["server", "client"]
            .iter()
            .map(|pod| format!("{logged} {}/{pod}", self.namespace))
            .collect();
        let deadline = Instant::now() + WITHIN;
        while !awaited.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            let (_, line) =
                self.agent.log.recv_timeout(wait).with_context(|| {
                    format!("the agent did not log {awaited:?} within {WITHIN:?}")
                })?;
            // "serving pod ns/server" must not match "...ns/server-x"; lines
            // go on with " as <identity>" or end with the name.
            awaited.retain(|needle| {
                !(line.ends_with(needle.as_str()) || line.contains(&format!("{needle} ")))
            });
        }
        self.enrolled = enrolled;
        Ok(())
    }

    /// The load generator for `options`, started inside the client pod's network
    /// namespace and the cgroup the agent's dataplane is attached to (what a
    /// container of the pod would be in on a production node, where the dataplane
    /// is at the cgroup root).
    pub fn start_client(&self, options: &ClientOptions) -> Result<Child> {
        let mut command = command_at(
            &self.client_netns,
            Some(self.agent.cgroup()),
            std::env::current_exe()?,
        )?;
        command
            .arg("mesh-client")
            .args(["--target", &options.target.to_string()])
            .args(["--rate", &options.rate.to_string()])
            .args(["--connections", &options.connections.to_string()])
            .args(["--warmup", &options.warmup.to_string()])
            .args(["--seconds", &options.seconds.to_string()])
            .args(["--connect-within", &options.connect_within.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .context("starting the load generator")
    }

    /// Stops the server and the agent; the agent's pods go with it (see
    /// [`Agent`]'s clean-up).
    pub async fn stop(mut self) -> Result<()> {
        self.server.kill().await?;
        self.agent.stop()
    }
}

fn namespace_object(name: &str, enrolled: bool) -> Value {
    let labels = match enrolled {
        true => json!({"skiff.io/mesh": "enabled"}),
        false => json!({}),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    })
}

/// The server and client pods and the Service. The server has no readiness
/// probe: skiff-bench's server, not the container, answers on its port.
fn workloads(namespace: &str) -> Vec<Value> {
    let pod = |name: &str, labels: Value| {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "nodeName": NODE_NAME,
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "main",
                    "image": IMAGE,
                    "command": ["sleep", "3600"],
                    "ports": [{"name": "http", "containerPort": SERVER_PORT}],
                }],
            },
        })
    };
    vec![
        pod("server", json!({"app": "server"})),
        pod("client", json!({})),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "server", "namespace": namespace},
            "spec": {
                "selector": {"app": "server"},
                "ports": [{
                    "name": "http",
                    "port": SERVICE_PORT,
                    "targetPort": "http",
                    "appProtocol": "http",
                }],
            },
        }),
    ]
}

async fn get(agent: &Agent, kind: &str, namespace: &str, name: &str) -> Result<Value> {
    let object = agent
        .client
        .clone()
        .get(proto::GetRequest {
            key: Some(proto::ObjectKey {
                kind: kind.into(),
                namespace: namespace.into(),
                name: name.into(),
            }),
        })
        .await
        .with_context(|| format!("getting {kind} {namespace}/{name}"))?
        .into_inner()
        .object;
    Ok(serde_json::from_slice(&object)?)
}

/// Pod `name`, once it is Ready.
async fn ready_pod(agent: &Agent, namespace: &str, name: &str) -> Result<Value> {
    let deadline = Instant::now() + WITHIN;
    loop {
        let pod = get(agent, "Pod", namespace, name).await?;
        if is_ready(&pod) {
            return Ok(pod);
        }
        if Instant::now() >= deadline {
            bail!(
                "pod {namespace}/{name} not Ready within {WITHIN:?}: {}",
                pod["status"]
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The server Service's virtual IP, once it has one.
async fn cluster_ip(agent: &Agent, namespace: &str) -> Result<IpAddr> {
    let deadline = Instant::now() + WITHIN;
    loop {
        let service = get(agent, "Service", namespace, "server").await?;
        if let Some(ip) = service["spec"]["clusterIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
        {
            return Ok(ip);
        }
        if Instant::now() >= deadline {
            bail!("service {namespace}/server has no clusterIP within {WITHIN:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

fn uid(pod: &Value) -> Result<&str> {
    pod["metadata"]["uid"].as_str().context("a pod without uid")
}

/// skiff-bench's HTTP server in the server pod's network namespace, once it
/// listens.
async fn start_server(netns: &Path) -> Result<Child> {
    let mut command = command_at(netns, None, std::env::current_exe()?)?;
    command
        .arg("mesh-server")
        .args(["--port", &SERVER_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut server = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .context("starting the server")?;
    let mut lines = stdout_lines(&mut server)?;
    let first = tokio::time::timeout(WITHIN, lines.next_line())
        .await
        .context("the server did not listen in time")??;
    if first.as_deref() != Some(LISTENING) {
        bail!("the server did not start: {first:?}");
    }
    Ok(server)
}

/// A child's stdout, line by line.
pub fn stdout_lines(child: &mut Child) -> Result<Lines<BufReader<ChildStdout>>> {
    Ok(BufReader::new(child.stdout.take().context("a child's stdout")?).lines())
}
