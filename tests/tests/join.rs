//! Agents on one etcd sharing the cluster's secrets: the first agent creates them
//! and its join token; another joins with `--join --token` and then serves the same
//! API token and reads the same Secrets. A missing or wrong token, or a cluster
//! nobody created, fails the join naming why, with nothing written.

use std::process::Command;

use skiff_tests::agent::{Agent, failed_start};
use skiff_tests::etcd::EtcdServer;
use skiff_tests::{unique_name, workspace_bin};

/// `skiff get secret NAME -o json` against `agent`, with the API token `token`.
fn get_secret(agent: &Agent, token: &str, name: &str) -> std::process::Output {
    Command::new(workspace_bin("skiff"))
        .env("SKIFF_CONFIG", agent.state_dir().join("no-config.yaml"))
        .args(["--server", &agent.server(), "--token", token])
        .args(["get", "secret", name, "-o", "json"])
        .output()
        .expect("run skiff")
}

#[test]
fn a_joining_agent_shares_the_api_token_and_reads_the_first_agents_secrets() {
    let etcd = EtcdServer::start();
    let url = etcd.store_url();
    let (a_node, b_node) = (unique_name("join-a"), unique_name("join-b"));
    let a = Agent::start(&["--store", &url, "--node-name", &a_node]);
    let token = a.join_token();
    assert!(token.starts_with("skiff1::"), "{token}");
    // Printed once, when the cluster was created.
    assert!(
        a.log.iter().any(|l| l.contains(&token)),
        "the join token is not in the first agent's log"
    );
    let secret = unique_name("db");
    a.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {secret}}}\nstringData:\n  password: shared-across-nodes\n"
    ));

    let b = Agent::start(&[
        "--store",
        &url,
        "--node-name",
        &b_node,
        "--join",
        "--token",
        &token,
    ]);
    assert!(!b.log.iter().any(|l| l.contains(&token)), "{:#?}", b.log);
    // The user's token from the first agent works on the second, which decrypts
    // the first agent's Secret.
    let out = get_secret(&b, &a.token(), &secret);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let object: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    // "shared-across-nodes" in base64.
    assert_eq!(object["data"]["password"], "c2hhcmVkLWFjcm9zcy1ub2Rlcw==");
    assert_eq!(b.token(), a.token());
    assert_eq!(b.join_token(), token);
    // And a token the cluster never issued does not.
    let out = get_secret(&b, "not-the-cluster-token", &secret);
    assert!(!out.status.success());

    // Restarted, the joined agent finds its join token in its state directory.
    let b = b.kill_and_restart();
    assert!(get_secret(&b, &a.token(), &secret).status.success());
}

#[test]
fn joining_without_a_token_with_a_wrong_one_or_with_no_cluster_fails_saying_why() {
    let etcd = EtcdServer::start();
    let url = etcd.store_url();
    let node = unique_name("join-bad");
    let join = |extra: &[&str]| {
        let mut args = vec!["--store", &url, "--node-name", &node, "--join"];
        args.extend_from_slice(extra);
        failed_start(&args)
    };
    let (status, stderr) = join(&["--token", "skiff1::nobody-created-this-cluster"]);
    assert!(!status.success());
    assert!(
        stderr.contains("no cluster to join") && stderr.contains(&url),
        "{stderr}"
    );

    let _first = Agent::start(&["--store", &url, "--node-name", &unique_name("join-first")]);
    let (status, stderr) = join(&[]);
    assert!(!status.success());
    assert!(
        stderr.contains("--join needs the cluster's join token"),
        "{stderr}"
    );

    let (status, stderr) = join(&["--token", "skiff1::a-token-that-is-not-the-one"]);
    assert!(!status.success());
    assert!(stderr.contains("wrong token"), "{stderr}");

    let (status, stderr) = join(&["--token", "short"]);
    assert!(!status.success());
    assert!(stderr.contains("at least 16 characters"), "{stderr}");

    // A second agent that neither joins nor has the token does not take over.
    let (status, stderr) = failed_start(&["--store", &url, "--node-name", &node]);
    assert!(!status.success());
    assert!(stderr.contains("already exists"), "{stderr}");

    // --join and the join token mean nothing without etcd.
    let (status, stderr) = failed_start(&["--join"]);
    assert!(!status.success());
    assert!(stderr.contains("--store"), "{stderr}");
    let (status, stderr) = failed_start(&["--token", "skiff1::a-token-for-no-cluster"]);
    assert!(!status.success());
    assert!(stderr.contains("embedded store"), "{stderr}");
}

#[test]
fn a_failed_join_writes_nothing_in_the_state_directory() {
    let etcd = EtcdServer::start();
    let url = etcd.store_url();
    let _first = Agent::start(&["--store", &url, "--node-name", &unique_name("join-first")]);
    let state = tempfile::tempdir().expect("temp dir");
    let dir = state.path().join("state");
    let out = Command::new(workspace_bin("skiff"))
        .arg("agent")
        .arg("--state-dir")
        .arg(&dir)
        .arg("--socket")
        .arg(state.path().join("skiff.sock"))
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--no-bpf-pin",
            "--store",
            &url,
        ])
        .args(["--join", "--token", "skiff1::a-token-that-is-not-the-one"])
        .output()
        .expect("run skiff agent");
    assert!(!out.status.success());
    assert!(!dir.exists(), "the failed join created {}", dir.display());
}
