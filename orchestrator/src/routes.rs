//! Direct routing between nodes: every other node's pod CIDRs are reached through
//! that node's address of the same family (`10.244.1.0/24 via 192.168.0.12`), so
//! pods on different nodes talk by pod IP without a tunnel. The routes follow the
//! Node objects in the store (list, then watch) and carry their own route
//! protocol number, so the agent finds exactly its own routes again after a
//! restart and removes those of nodes that left. They stay when the agent stops:
//! pods keep running, and keep talking.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use log::{info, warn};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::api::registry::typed::{cast, list_all, watch_all};
use crate::api::registry::{EventType, Registry};
use crate::model::{Kind, Node};

/// The route protocol skiff's routes carry (`ip route show proto 152`): a number
/// no routing daemon uses.
pub const PROTOCOL: u8 = 152;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
}

/// Destination CIDR to next hop.
pub type Routes = BTreeMap<IpNet, IpAddr>;

/// The routes this node needs: each other node's pod CIDRs via its InternalIP of
/// the same family (a CIDR whose family the node has no address of is skipped).
pub fn desired<'a>(nodes: impl IntoIterator<Item = &'a Node>, this_node: &str) -> Routes {
    let mut routes = Routes::new();
    for node in nodes.into_iter().filter(|n| n.metadata.name != this_node) {
        let addresses: Vec<IpAddr> = node
            .status
            .addresses
            .iter()
            .filter(|a| a.r#type == "InternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        let cidrs = node
            .spec
            .pod_cidrs
            .iter()
            .chain(node.spec.pod_cidr.iter())
            .filter_map(|c| c.parse::<IpNet>().ok());
        for cidr in cidrs {
            let via = addresses
                .iter()
                .find(|ip| ip.is_ipv4() == matches!(cidr, IpNet::V4(_)));
            if let Some(via) = via {
                routes.insert(cidr.trunc(), *via);
            }
        }
    }
    routes
}

/// The kernel's routing table, as far as this module changes it.
#[async_trait::async_trait]
pub trait RouteTable: Send {
    /// The routes with skiff's protocol.
    async fn installed(&mut self) -> Result<Routes, Error>;
    /// Adds or replaces the route to `destination`.
    async fn replace(&mut self, destination: IpNet, via: IpAddr) -> Result<(), Error>;
    async fn remove(&mut self, destination: IpNet, via: IpAddr) -> Result<(), Error>;
}

/// Brings `table` to `wanted`: adds what is missing or points elsewhere, removes
/// what is no longer wanted. Returns how many routes changed.
pub async fn converge(table: &mut dyn RouteTable, wanted: &Routes) -> Result<usize, Error> {
    let installed = table.installed().await?;
    let mut changed = 0;
    for (destination, via) in wanted {
        if installed.get(destination) != Some(via) {
            table.replace(*destination, *via).await?;
            info!("route to {destination} via {via}");
            changed += 1;
        }
    }
    for (destination, via) in installed {
        if !wanted.contains_key(&destination) {
            table.remove(destination, via).await?;
            info!("route to {destination} via {via} removed: its node left");
            changed += 1;
        }
    }
    Ok(changed)
}

/// The main routing table of this network namespace, over rtnetlink.
pub struct Kernel {
    handle: Handle,
}

impl Kernel {
    /// Opens a netlink connection (its task runs on the current runtime).
    pub fn open() -> Result<Self, Error> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::Socket)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }
}

fn message(destination: IpNet, via: IpAddr) -> Option<RouteMessage> {
    let protocol = RouteProtocol::Other(PROTOCOL);
    match (destination, via) {
        (IpNet::V4(net), IpAddr::V4(gateway)) => Some(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .gateway(gateway)
                .protocol(protocol)
                .build(),
        ),
        (IpNet::V6(net), IpAddr::V6(gateway)) => Some(
            RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .gateway(gateway)
                .protocol(protocol)
                .build(),
        ),
        _ => None,
    }
}

#[async_trait::async_trait]
impl RouteTable for Kernel {
    async fn installed(&mut self) -> Result<Routes, Error> {
        let mut routes = Routes::new();
        let dumps = [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ];
        for dump in dumps {
            let listed: Vec<RouteMessage> = self
                .handle
                .route()
                .get(dump)
                .execute()
                .try_collect()
                .await
                .map_err(|source| Error::Netlink {
                    what: "listing routes".into(),
                    source,
                })?;
            for route in listed {
                if route.header.protocol != RouteProtocol::Other(PROTOCOL) {
                    continue;
                }
                let mut destination = None;
                let mut via = None;
                for attribute in &route.attributes {
                    match attribute {
                        RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                            destination = Some(IpAddr::V4(*ip))
                        }
                        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => {
                            destination = Some(IpAddr::V6(*ip))
                        }
                        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => {
                            via = Some(IpAddr::V4(*ip))
                        }
                        RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => {
                            via = Some(IpAddr::V6(*ip))
                        }
                        _ => {}
                    }
                }
                let net = destination
                    .and_then(|ip| IpNet::new(ip, route.header.destination_prefix_length).ok());
                if let (Some(net), Some(via)) = (net, via) {
                    routes.insert(net, via);
                }
            }
        }
        Ok(routes)
    }

    async fn replace(&mut self, destination: IpNet, via: IpAddr) -> Result<(), Error> {
        let Some(route) = message(destination, via) else {
            return Ok(());
        };
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|source| Error::Netlink {
                what: format!("adding the route to {destination} via {via}"),
                source,
            })
    }

    async fn remove(&mut self, destination: IpNet, via: IpAddr) -> Result<(), Error> {
        let Some(route) = message(destination, via) else {
            return Ok(());
        };
        self.handle
            .route()
            .del(route)
            .execute()
            .await
            .map_err(|source| Error::Netlink {
                what: format!("removing the route to {destination} via {via}"),
                source,
            })
    }
}

/// Keeps the kernel's routes to other nodes' pods in step with the store until
/// the task is aborted; errors are logged and the Nodes listed again.
pub async fn run(registry: Registry, this_node: String) {
    let mut kernel = match Kernel::open() {
        Ok(kernel) => kernel,
        Err(e) => return warn!("routes to other nodes' pods: {e}"),
    };
    loop {
        if let Err(e) = follow(&registry, &this_node, &mut kernel).await {
            warn!("routes to other nodes' pods: {e}; listing the nodes again");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One list-then-watch round over the Nodes.
async fn follow(
    registry: &Registry,
    this_node: &str,
    table: &mut dyn RouteTable,
) -> Result<(), String> {
    let (listed, version) = list_all::<Node>(registry, Kind::Node)
        .await
        .map_err(|e| e.to_string())?;
    let mut nodes: BTreeMap<String, Node> = listed
        .into_iter()
        .map(|n| (n.metadata.name.clone(), n))
        .collect();
    let mut current = desired(nodes.values(), this_node);
    converge(table, &current).await.map_err(|e| e.to_string())?;
    let mut events = watch_all(registry, Kind::Node, &version)
        .await
        .map_err(|e| e.to_string())?;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| e.to_string())?;
        let Some(node) = cast::<Node>(&event.object) else {
            continue;
        };
        match event.event_type {
            EventType::Deleted => nodes.remove(&node.metadata.name),
            EventType::Added | EventType::Modified => {
                nodes.insert(node.metadata.name.clone(), node)
            }
        };
        let wanted = desired(nodes.values(), this_node);
        // Heartbeats change Nodes every few seconds; the routes rarely.
        if wanted != current {
            converge(table, &wanted).await.map_err(|e| e.to_string())?;
            current = wanted;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeAddress;

    fn node(name: &str, cidrs: &[&str], ips: &[&str]) -> Node {
        let mut node = Node::default();
        node.metadata.name = name.into();
        node.spec.pod_cidrs = cidrs.iter().map(|c| c.to_string()).collect();
        node.status.addresses = ips
            .iter()
            .map(|ip| NodeAddress {
                r#type: "InternalIP".into(),
                address: ip.to_string(),
            })
            .collect();
        node
    }

    fn net(text: &str) -> IpNet {
        text.parse().expect("CIDR")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("IP")
    }

    #[test]
    fn other_nodes_pod_cidrs_go_via_their_address_of_the_same_family() {
        let nodes = [
            node(
                "a",
                &["10.244.0.0/24", "fd00:10:244::/64"],
                &["192.168.0.1", "fd00::1"],
            ),
            node(
                "b",
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                &["192.168.0.2", "fd00::2"],
            ),
            // No IPv6 address: its IPv6 CIDR is unreachable, so no route.
            node(
                "c",
                &["10.244.2.0/24", "fd00:10:244:2::/64"],
                &["192.168.0.3"],
            ),
        ];
        let routes = desired(&nodes, "a");
        let expected: Routes = [
            (net("10.244.1.0/24"), ip("192.168.0.2")),
            (net("fd00:10:244:1::/64"), ip("fd00::2")),
            (net("10.244.2.0/24"), ip("192.168.0.3")),
        ]
        .into_iter()
        .collect();
        assert_eq!(routes, expected);
    }

    /// A routing table in memory, recording the calls.
    #[derive(Default)]
    struct Fake {
        routes: Routes,
        calls: Vec<String>,
    }

    #[async_trait::async_trait]
    impl RouteTable for Fake {
        async fn installed(&mut self) -> Result<Routes, Error> {
            Ok(self.routes.clone())
        }
        async fn replace(&mut self, destination: IpNet, via: IpAddr) -> Result<(), Error> {
            self.calls.push(format!("replace {destination} {via}"));
            self.routes.insert(destination, via);
            Ok(())
        }
        async fn remove(&mut self, destination: IpNet, via: IpAddr) -> Result<(), Error> {
            self.calls.push(format!("remove {destination} {via}"));
            self.routes.remove(&destination);
            Ok(())
        }
    }

    #[tokio::test]
    async fn converging_adds_moves_and_removes_only_what_differs() {
        let mut table = Fake::default();
        table.routes.insert(net("10.244.1.0/24"), ip("192.168.0.2"));
        table.routes.insert(net("10.244.2.0/24"), ip("192.168.0.9"));
        table.routes.insert(net("10.244.3.0/24"), ip("192.168.0.3"));
        let wanted: Routes = [
            (net("10.244.1.0/24"), ip("192.168.0.2")),
            (net("10.244.2.0/24"), ip("192.168.0.4")),
            (net("10.244.5.0/24"), ip("192.168.0.5")),
        ]
        .into_iter()
        .collect();
        assert_eq!(converge(&mut table, &wanted).await.expect("converge"), 3);
        assert_eq!(
            table.calls,
            [
                "replace 10.244.2.0/24 192.168.0.4",
                "replace 10.244.5.0/24 192.168.0.5",
                "remove 10.244.3.0/24 192.168.0.3",
            ]
        );
        assert_eq!(table.routes, wanted);
        // Level-triggered: a second pass changes nothing.
        table.calls.clear();
        assert_eq!(converge(&mut table, &wanted).await.expect("converge"), 0);
        assert!(table.calls.is_empty());
    }
}
