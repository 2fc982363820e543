//! Making, checking and removing an attachment in the kernel over rtnetlink.
//!
//! A netlink socket talks to the network namespace it was created in, so work on
//! the pod's side runs on a thread that has entered the pod's namespace, with a
//! socket of its own; work on the node's side runs in the plugin's own namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::invocation::Invocation;
use crate::result::{CniResult, POD_INTERFACE, host_net};
use crate::wiring::Wiring;
use crate::{CniError, code};

/// What ADD made that the result reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    pub host_mac: String,
    pub pod_mac: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    State(String),
}

impl From<NetlinkError> for CniError {
    fn from(error: NetlinkError) -> Self {
        CniError::new(code::KERNEL, error.to_string(), "")
    }
}

/// Builds the attachment: the veth pair, the node side's gateway addresses and
/// routes to the pod, then the pod side's name, addresses and routes.
pub fn add(wiring: &Wiring) -> Result<Links, NetlinkError> {
    let netns = File::open(&wiring.netns).map_err(|source| NetlinkError::Io {
        what: format!("opening the network namespace {}", wiring.netns.display()),
        source,
    })?;
    let host_mac = in_netns(None, async |handle| {
        // Leftovers of an ADD that was killed half-way: the pair goes with its node side.
        delete_link(handle, &wiring.host_veth).await?;
        // The pod side is made in the pod's namespace: moving it there afterwards
        // took 20-27 ms on these machines (`ip link set ... netns`), most of an ADD,
        // against about nothing for making it there.
        let mut pod_side = LinkMessageBuilder::<LinkUnspec>::new()
            .name(wiring.transit_name.clone())
            .setns_by_fd(netns.as_raw_fd());
        let mut veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(wiring.host_veth.clone());
        if let Some(mtu) = wiring.mtu {
            pod_side = pod_side.mtu(mtu);
            veth = veth.mtu(mtu);
        }
        let veth = veth.set_info_data(InfoData::Veth(InfoVeth::Peer(pod_side.build())));
        let what = format!("creating veth pair {}", wiring.host_veth);
        run(&what, handle.link().add(veth.build()).execute()).await?;

        let host = link(handle, &wiring.host_veth).await?.header.index;
        skip_duplicate_address_detection(&wiring.host_veth)?;
        let up = LinkUnspec::new_with_index(host).up().build();
        run(
            &format!("bringing {} up", wiring.host_veth),
            handle.link().set(up).execute(),
        )
        .await?;
        for address in &wiring.addresses {
            add_address(handle, host, address.gateway).await?;
            add_route(handle, on_link(address.ip, host)).await?;
        }
        enable_forwarding()?;
        Ok(mac(&link(handle, &wiring.host_veth).await?))
    })?;
    let pod_mac = in_netns(Some(netns.as_fd()), async |handle| {
        let index = link(handle, &wiring.transit_name).await?.header.index;
        let rename = LinkUnspec::new_with_index(index).name(wiring.pod_ifname.clone());
        if let Err(e) = handle.link().set(rename.build()).execute().await {
            return Err(match errno(&e) {
                Some(libc::EEXIST) => NetlinkError::State(format!(
                    "an interface named {} already exists in {}",
                    wiring.pod_ifname,
                    wiring.netns.display()
                )),
                _ => NetlinkError::Netlink {
                    what: format!("naming the pod side {}", wiring.pod_ifname),
                    source: e,
                },
            });
        }
        skip_duplicate_address_detection(&wiring.pod_ifname)?;
        let up = LinkUnspec::new_with_index(index).up().build();
        run(
            &format!("bringing {} up", wiring.pod_ifname),
            handle.link().set(up).execute(),
        )
        .await?;
        for address in &wiring.addresses {
            add_address(handle, index, address.ip).await?;
            // The gateway is on the link; everything else goes through it.
            add_route(handle, on_link(address.gateway, index)).await?;
            add_route(handle, default_via(address.gateway, index)).await?;
        }
        Ok(mac(&link(handle, &wiring.pod_ifname).await?))
    })?;
    Ok(Links { host_mac, pod_mac })
}

/// Removes an attachment's veth pair (and with it both ends' addresses and
/// routes). Absent links are fine: DEL is idempotent.
pub fn remove(host_veth: &str) -> Result<(), NetlinkError> {
    in_netns(None, async |handle| delete_link(handle, host_veth).await)
}

/// CHECK: the pod's interface, addresses and default routes of `expected` are in
/// place, and the node side is up. Every difference is reported.
pub fn check(call: &Invocation, expected: &CniResult) -> Result<(), CniError> {
    let netns_path = call.netns.clone().unwrap_or_default();
    let netns = File::open(&netns_path).map_err(|e| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("CNI_NETNS {}: {e}", netns_path.display()),
            "",
        )
    })?;
    let host_veth = expected
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_none())
        .map(|i| i.name.clone());
    let mut problems = Vec::new();
    let pod_state = in_netns(Some(netns.as_fd()), async |handle| {
        let Some(link) = find_link(handle, &call.ifname).await? else {
            return Ok(None);
        };
        let index = link.header.index;
        Ok(Some((
            addresses(handle, index).await?,
            gateways(handle, index).await?,
        )))
    })
    .map_err(CniError::from)?;
    match pod_state {
        None => problems.push(format!("interface {} is missing", call.ifname)),
        Some((addresses, gateways)) => {
            for ip in expected
                .ips
                .iter()
                .filter(|c| c.interface == Some(POD_INTERFACE))
            {
                if !addresses.contains(&ip.address.addr()) {
                    problems.push(format!(
                        "{}: address {} is missing",
                        call.ifname, ip.address
                    ));
                }
                if let Some(gateway) = ip.gateway
                    && !gateways.contains(&gateway)
                {
                    problems.push(format!(
                        "{}: the default route via {gateway} is missing",
                        call.ifname
                    ));
                }
            }
        }
    }
    if let Some(host_veth) = host_veth {
        let present = in_netns(None, async |handle| {
            Ok(find_link(handle, &host_veth).await?.is_some())
        })
        .map_err(CniError::from)?;
        if !present {
            problems.push(format!("node-side interface {host_veth} is missing"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(code::CHECK_FAILED, problems.join("; "), ""))
    }
}

/// Runs `work` with a netlink handle in `netns` (None: the plugin's own), on a
/// thread of its own so entering a namespace never leaks to the caller.
fn in_netns<T, F>(netns: Option<BorrowedFd<'_>>, work: F) -> Result<T, NetlinkError>
where
    T: Send,
    F: AsyncFnOnce(&Handle) -> Result<T, NetlinkError> + Send,
{
    let fd = netns.map(|fd| fd.as_raw_fd());
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            if let Some(fd) = fd {
                // SAFETY: setns on this thread only, with a namespace fd the caller keeps open.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(NetlinkError::Io {
                        what: "entering the pod's network namespace".into(),
                        source: std::io::Error::last_os_error(),
                    });
                }
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|source| NetlinkError::Io {
                    what: "starting the netlink runtime".into(),
                    source,
                })?;
            runtime.block_on(async move {
                let (connection, handle, _) =
                    rtnetlink::new_connection().map_err(|source| NetlinkError::Io {
                        what: "opening a netlink socket".into(),
                        source,
                    })?;
                tokio::spawn(connection);
                work(&handle).await
            })
        });
        worker
            .join()
            .unwrap_or_else(|_| Err(NetlinkError::State("a netlink worker panicked".into())))
    })
}

async fn run<T>(
    what: &str,
    request: impl Future<Output = Result<T, rtnetlink::Error>>,
) -> Result<T, NetlinkError> {
    request.await.map_err(|source| NetlinkError::Netlink {
        what: what.to_string(),
        source,
    })
}

fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|c| -c.get()),
        _ => None,
    }
}

async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(source) => Err(NetlinkError::Netlink {
            what: format!("looking up {name}"),
            source,
        }),
    }
}

async fn link(handle: &Handle, name: &str) -> Result<LinkMessage, NetlinkError> {
    find_link(handle, name)
        .await?
        .ok_or_else(|| NetlinkError::State(format!("interface {name} vanished")))
}

async fn delete_link(handle: &Handle, name: &str) -> Result<(), NetlinkError> {
    if let Some(link) = find_link(handle, name).await? {
        match handle.link().del(link.header.index).execute().await {
            Ok(()) => {}
            // Deleted meanwhile (e.g. with its peer).
            Err(e) if errno(&e) == Some(libc::ENODEV) => {}
            Err(source) => {
                return Err(NetlinkError::Netlink {
                    what: format!("deleting {name}"),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Adds `ip` as a single-host address; IPv6 without duplicate address detection,
/// so it is usable at once.
async fn add_address(handle: &Handle, index: u32, ip: IpAddr) -> Result<(), NetlinkError> {
    let net = host_net(ip);
    let mut request = handle.address().add(index, ip, net.prefix_len()).replace();
    if ip.is_ipv6() {
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    run(&format!("adding address {net}"), request.execute()).await
}

async fn add_route(handle: &Handle, route: RouteMessage) -> Result<(), NetlinkError> {
    let what = format!("adding route {route:?}");
    run(&what, handle.route().add(route).replace().execute()).await
}

/// `ip/32 dev <index> scope link` (or /128).
fn on_link(ip: IpAddr, index: u32) -> RouteMessage {
    match ip {
        IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(v4, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build(),
        IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(v6, 128)
            .output_interface(index)
            .build(),
    }
}

/// `default via <gateway> dev <index>`.
fn default_via(gateway: IpAddr, index: u32) -> RouteMessage {
    match gateway {
        IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(v4)
            .output_interface(index)
            .build(),
        IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
            .gateway(v6)
            .output_interface(index)
            .build(),
    }
}

async fn addresses(handle: &Handle, index: u32) -> Result<Vec<IpAddr>, NetlinkError> {
    let messages: Vec<_> = run(
        "listing addresses",
        handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect(),
    )
    .await?;
    Ok(messages
        .iter()
        .flat_map(|m| &m.attributes)
        .filter_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
        .collect())
}

/// The gateways of the default routes through `index`, both families.
async fn gateways(handle: &Handle, index: u32) -> Result<Vec<IpAddr>, NetlinkError> {
    let mut found = Vec::new();
    let dumps = [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ];
    for dump in dumps {
        let routes: Vec<RouteMessage> = run(
            "listing routes",
            handle.route().get(dump).execute().try_collect(),
        )
        .await?;
        for route in routes {
            let through_link = route.attributes.contains(&RouteAttribute::Oif(index));
            if !through_link || route.header.destination_prefix_length != 0 {
                continue;
            }
            found.extend(route.attributes.iter().filter_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
                RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
                _ => None,
            }));
        }
    }
    Ok(found)
}

fn mac(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) => Some(
                bytes
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

/// Turns IPv6 duplicate address detection off on `link` (in the calling thread's
/// namespace) before it comes up. Each end of a veth pair is the only host on its
/// link, so nothing can be duplicated; with detection on, the link-local addresses
/// stay tentative for a second or two, during which neighbour discovery between
/// node and pod fails and the first IPv6 packets to a pod that is already ready
/// wait a full retransmission (1 s) or are lost.
fn skip_duplicate_address_detection(link: &str) -> Result<(), NetlinkError> {
    let path = format!("/proc/sys/net/ipv6/conf/{link}/accept_dad");
    match std::fs::write(&path, "0") {
        // No IPv6 in this kernel or namespace: nothing to detect.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        written => written.map_err(|source| NetlinkError::Io {
            what: format!("turning duplicate address detection off ({path})"),
            source,
        }),
    }
}

/// Pods reach beyond their node through it: forwarding on, for both families.
fn enable_forwarding() -> Result<(), NetlinkError> {
    for path in [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ] {
        std::fs::write(path, "1").map_err(|source| NetlinkError::Io {
            what: format!("enabling forwarding ({path})"),
            source,
        })?;
    }
    Ok(())
}
