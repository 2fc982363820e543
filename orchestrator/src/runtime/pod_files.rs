//! The files the node writes into every container of a pod, as the kubelet does:
//! /etc/hosts (with the pod's own name and addresses), /etc/resolv.conf (cluster
//! DNS first, per the pod's dnsPolicy) and /etc/hostname.

use std::net::IpAddr;
use std::path::Path;

use crate::model::{DnsPolicy, Pod};

use super::bundle::BindMount;

/// The cluster's DNS, as pods see it.
#[derive(Debug, Clone)]
pub struct Dns {
    pub nameservers: Vec<IpAddr>,
    /// cluster.local by default.
    pub cluster_domain: String,
}

const FILES: [&str; 3] = ["hosts", "resolv.conf", "hostname"];

pub fn write(dir: &Path, pod: &Pod, ips: &[IpAddr], dns: &Dns) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("hosts"), hosts(pod, ips, &dns.cluster_domain))?;
    std::fs::write(dir.join("resolv.conf"), resolv_conf(pod, dns)?)?;
    std::fs::write(dir.join("hostname"), format!("{}\n", hostname(pod)))
}

/// Bind mounts of the files into each container.
pub fn mounts(dir: &Path) -> Vec<BindMount> {
    FILES
        .iter()
        .map(|file| BindMount {
            source: dir.join(file),
            destination: format!("/etc/{file}"),
            read_only: false,
        })
        .collect()
}

fn hostname(pod: &Pod) -> String {
    pod.spec
        .hostname
        .clone()
        .unwrap_or_else(|| pod.metadata.name.clone())
}

fn hosts(pod: &Pod, ips: &[IpAddr], domain: &str) -> String {
    let name = hostname(pod);
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    // With a subdomain, the pod also has its fully qualified name.
    let names = match &pod.spec.subdomain {
        Some(sub) => format!("{name}.{sub}.{namespace}.svc.{domain}\t{name}"),
        None => name,
    };
    let mut text = String::from(
        "# Kubernetes-managed hosts file (skiff).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    for ip in ips {
        text.push_str(&format!("{ip}\t{names}\n"));
    }
    text
}

fn resolv_conf(pod: &Pod, dns: &Dns) -> std::io::Result<String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let domain = &dns.cluster_domain;
    Ok(
        match pod.spec.dns_policy.unwrap_or(DnsPolicy::ClusterFirst) {
            DnsPolicy::ClusterFirst => {
                let mut text = format!("search {namespace}.svc.{domain} svc.{domain} {domain}\n");
                for server in &dns.nameservers {
                    text.push_str(&format!("nameserver {server}\n"));
                }
                text.push_str("options ndots:5\n");
                text
            }
            DnsPolicy::Default => std::fs::read_to_string("/etc/resolv.conf")?,
            DnsPolicy::None => String::new(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Object;

    fn pod(extra: serde_json::Value) -> Pod {
        let mut value = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        });
        if let serde_json::Value::Object(extra) = extra {
            for (k, v) in extra {
                value["spec"][k] = v;
            }
        }
        match Object::from_value(value).unwrap() {
            Object::Pod(pod) => pod,
            _ => unreachable!(),
        }
    }

    fn dns() -> Dns {
        Dns {
            nameservers: vec![
                "10.96.0.10".parse().unwrap(),
                "fd00:10:96::a".parse().unwrap(),
            ],
            cluster_domain: "cluster.local".into(),
        }
    }

    #[test]
    fn cluster_first_searches_the_namespace_then_the_cluster() {
        assert_eq!(
            resolv_conf(&pod(serde_json::json!({})), &dns()).unwrap(),
            "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\nnameserver fd00:10:96::a\noptions ndots:5\n"
        );
    }

    #[test]
    fn hosts_name_the_pod_on_each_address() {
        let ips: Vec<IpAddr> = vec![
            "10.244.0.5".parse().unwrap(),
            "fd00:10:244::5".parse().unwrap(),
        ];
        let text = hosts(
            &pod(serde_json::json!({"hostname": "db-0", "subdomain": "db"})),
            &ips,
            "cluster.local",
        );
        assert!(
            text.contains("10.244.0.5\tdb-0.db.shop.svc.cluster.local\tdb-0\n"),
            "{text}"
        );
        assert!(
            text.contains("fd00:10:244::5\tdb-0.db.shop.svc.cluster.local\tdb-0\n"),
            "{text}"
        );
        assert!(text.contains("127.0.0.1\tlocalhost\n"));
    }

    #[test]
    fn dns_policy_none_writes_nothing() {
        assert_eq!(
            resolv_conf(&pod(serde_json::json!({"dnsPolicy": "None"})), &dns()).unwrap(),
            ""
        );
    }
}
