//! The `skiff-cni` executable speaks the CNI protocol: result or error object on
//! stdout, exit status zero only on success.

use std::io::Write;
use std::process::{Command, Stdio};

use skiff_tests::workspace_bin;

fn invoke(command: &str, stdin: &[u8]) -> (bool, serde_json::Value) {
    let mut child = Command::new(workspace_bin("skiff-cni"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "skiff-test")
        .env("CNI_NETNS", "/run/netns/skiff-test")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run skiff-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let json = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    (out.status.success(), json)
}

#[test]
fn version_reports_supported_versions() {
    let (ok, out) = invoke("VERSION", b"{\"cniVersion\":\"1.1.0\"}");
    assert!(ok);
    assert_eq!(
        out["supportedVersions"],
        serde_json::json!(["0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn undecodable_config_fails_with_the_spec_error_object() {
    let (ok, out) = invoke("ADD", b"not json");
    assert!(!ok);
    assert_eq!(out["code"], 6);
    assert_eq!(out["cniVersion"], "1.1.0");
    assert!(out["msg"].as_str().is_some_and(|m| !m.is_empty()));
}
