//! ServiceAccounts on a real agent: every namespace gets (and keeps) a `default`
//! account, and a pod naming an account that does not exist is refused at apply.
//! The pods here are bound to a node that does not exist, so none runs.

use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::agent::Agent;
use skiff_tests::unique_name;

const TIMEOUT: Duration = Duration::from_secs(30);

fn account(agent: &Agent, namespace: &str, name: &str) -> Option<Value> {
    let out = agent.cli(&["get", "serviceaccount", name, "-n", namespace, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("JSON output"))
}

/// The `default` account of `namespace`, once the controller made one whose uid
/// is not `not_uid`.
fn default_account(agent: &Agent, namespace: &str, not_uid: Option<&str>) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(account) = account(agent, namespace, "default")
            .filter(|a| a["metadata"]["uid"].as_str() != not_uid)
        {
            return account;
        }
        assert!(
            Instant::now() < deadline,
            "no default ServiceAccount in {namespace}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pod(namespace: &str, name: &str, account: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  nodeName: no-such-node\n  serviceAccountName: {account}\n  \
         containers: [{{name: c, image: busybox:1.36}}]\n"
    )
}

#[test]
fn every_namespace_keeps_a_default_account_and_pods_need_theirs() {
    let agent = Agent::start(&[]);
    // The namespaces every cluster has, and a new one.
    default_account(&agent, "default", None);
    default_account(&agent, "kube-system", None);
    let namespace = unique_name("sa");
    agent.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n"
    ));
    let first = default_account(&agent, &namespace, None);
    let table = agent.ok(&["get", "sa", "-n", &namespace]);
    assert!(table.lines().any(|l| l.starts_with("default ")), "{table}");

    // Deleted, it comes back (a new object).
    agent.ok(&["delete", "serviceaccount", "default", "-n", &namespace]);
    default_account(&agent, &namespace, first["metadata"]["uid"].as_str());

    // A pod naming a missing account is refused, and nothing is stored.
    let out = agent.cli_with_stdin(
        &["apply", "-f", "-"],
        pod(&namespace, "builds", "builder").as_bytes(),
    );
    assert!(
        !out.status.success(),
        "a pod of a missing account was applied"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "spec.serviceAccountName: error looking up service account {namespace}/builder: serviceaccount \"builder\" not found"
        )),
        "{stderr}"
    );
    assert!(
        agent
            .cli(&["get", "pod", "builds", "-n", &namespace])
            .status
            .code()
            .is_some_and(|c| c != 0)
    );

    // With the account, the same pod is accepted and runs as it.
    agent.apply(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: builder, namespace: {namespace}}}\n"
    ));
    agent.apply(&pod(&namespace, "builds", "builder"));
    let stored: Value =
        serde_json::from_str(&agent.ok(&["get", "pod", "builds", "-n", &namespace, "-o", "json"]))
            .expect("JSON output");
    assert_eq!(stored["spec"]["serviceAccountName"], "builder");
}
