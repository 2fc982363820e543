//! Each node's pod CIDRs, reserved in the store so that nodes sharing it never get
//! overlapping ones. All reservations are one key (`/registry/ranges/podcidrs`, a
//! JSON map of CIDR to node, as Kubernetes keeps its service IP range in one key),
//! rewritten with a compare-and-swap on its revision: two nodes starting at once
//! cannot both take a CIDR, or two overlapping ones of different sizes; the loser
//! reads the table again and chooses again.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::{ApiError, Registry};
use crate::api::allocator::{PodCidr, PodCidrError};
use crate::store::{StoreError, Txn};

const KEY: &str = "/registry/ranges/podcidrs";
/// Compare-and-swap rounds before giving up: each round at least one contender
/// wins, so this many nodes may start at once.
const ATTEMPTS: usize = 64;

impl Registry {
    /// Reserves what `node` asks for (one [`PodCidr`] per IP family) and returns the
    /// CIDRs in the same order. A node that already holds them gets them again.
    pub async fn reserve_pod_cidrs(
        &self,
        node: &str,
        wanted: &[PodCidr],
    ) -> Result<Vec<IpNet>, ApiError> {
        PodCidr::one_per_family(wanted).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        for _ in 0..ATTEMPTS {
            let (stored, _) = self.store.get(KEY).await.map_err(ApiError::Store)?;
            let revision = stored.as_ref().map_or(0, |kv| kv.mod_revision);
            let mut table: BTreeMap<String, String> = match &stored {
                None => BTreeMap::new(),
                Some(kv) => {
                    serde_json::from_slice(&kv.value).map_err(|e| corrupt(e.to_string()))?
                }
            };
            let mut held = table
                .iter()
                .map(|(net, owner)| {
                    let net = net
                        .parse()
                        .map_err(|_| corrupt(format!("\"{net}\" is not a CIDR")))?;
                    Ok((net, owner.clone()))
                })
                .collect::<Result<Vec<(IpNet, String)>, ApiError>>()?;
            let mut chosen = Vec::with_capacity(wanted.len());
            for want in wanted {
                let net = want.choose(node, &held).map_err(|error| match error {
                    PodCidrError::Exhausted { .. } => ApiError::Exhausted(error.to_string()),
                    _ => ApiError::BadRequest(error.to_string()),
                })?;
                held.push((net, node.to_owned()));
                chosen.push(net);
            }
            let before = table.len();
            for net in &chosen {
                table.insert(net.to_string(), node.to_owned());
            }
            if table.len() == before {
                return Ok(chosen);
            }
            let value = serde_json::to_vec(&table).map_err(|e| corrupt(e.to_string()))?;
            match self
                .store
                .txn(Txn::new().when(KEY, revision).put(KEY, value))
                .await
            {
                Ok(_) => return Ok(chosen),
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(ApiError::Store(error)),
            }
        }
        Err(ApiError::Exhausted(format!(
            "reserving pod CIDRs for node {node}: {KEY} changed under every one of {ATTEMPTS} attempts"
        )))
    }
}

fn corrupt(reason: String) -> ApiError {
    ApiError::Corrupt {
        key: KEY.into(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::allocator::ServiceNetworks;
    use crate::api::encryption::{KEY_LEN, SecretBox};
    use crate::store::Store;
    use crate::store::embedded::EmbeddedStore;

    fn registry() -> (Registry, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).unwrap());
        let secrets = SecretBox::new(&[3u8; KEY_LEN]).unwrap();
        (
            Registry::new(store, secrets, ServiceNetworks::default()),
            dir,
        )
    }

    fn dual_stack() -> Vec<PodCidr> {
        vec![
            PodCidr::Allocate {
                cluster: "10.244.0.0/16".parse().unwrap(),
                prefix_len: 24,
            },
            PodCidr::Allocate {
                cluster: "fd00:10:244::/56".parse().unwrap(),
                prefix_len: 64,
            },
        ]
    }

    fn texts(nets: &[IpNet]) -> Vec<String> {
        nets.iter().map(ToString::to_string).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_starting_at_once_get_distinct_pod_cidrs_and_keep_them() {
        let (registry, _dir) = registry();
        let nodes: Vec<String> = (0..16).map(|i| format!("node-{i}")).collect();
        let wanted = dual_stack();
        let reserved = futures::future::join_all(
            nodes
                .iter()
                .map(|node| registry.reserve_pod_cidrs(node, &wanted)),
        )
        .await;
        let reserved: Vec<Vec<IpNet>> = reserved.into_iter().map(Result::unwrap).collect();
        let mut all: Vec<IpNet> = reserved.iter().flatten().copied().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 2 * nodes.len(), "{all:?}");
        // The lowest subnets, no gaps.
        assert_eq!(all[0].to_string(), "10.244.0.0/24");
        assert_eq!(all[15].to_string(), "10.244.15.0/24");
        // Asked again (an agent restarting), each node gets what it holds.
        for (node, nets) in nodes.iter().zip(&reserved) {
            let again = registry
                .reserve_pod_cidrs(node, &dual_stack())
                .await
                .unwrap();
            assert_eq!(&again, nets);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fixed_pod_cidr_is_reserved_and_refused_to_others() {
        let (registry, _dir) = registry();
        let fixed = vec![PodCidr::Fixed("10.244.0.0/23".parse().unwrap())];
        let a = registry.reserve_pod_cidrs("a", &fixed).await.unwrap();
        assert_eq!(texts(&a), ["10.244.0.0/23"]);
        let b = registry
            .reserve_pod_cidrs("b", &dual_stack())
            .await
            .unwrap();
        assert_eq!(texts(&b), ["10.244.2.0/24", "fd00:10:244::/64"]);
        match registry.reserve_pod_cidrs("c", &fixed).await {
            Err(ApiError::BadRequest(message)) => {
                assert!(message.contains("node a's"), "{message}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
