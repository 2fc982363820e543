//! The eBPF dataplane: loads skiff's programs (embedded in the binary), attaches the
//! socket load balancer to a cgroup v2 directory, and keeps the service maps.
//!
//! Without a pin directory, programs are attached through bpf links owned by this
//! process: dropping the [`Dataplane`] (or the process dying) detaches them and
//! unloads everything. With one (the agent's default), the maps and links are
//! pinned in bpffs, so services keep working while no agent runs (a crash, a
//! restart); the next agent reuses the maps, adopts their contents and replaces
//! the links with its own programs, attaching before it lets the old ones go.
//! [`Dataplane::detach`] removes the pins: a clean stop leaves nothing behind.
//!
//! When an update removes backends, their counters go, and for UDP services the
//! connected sockets skiff pinned to them are destroyed (see [`sockets`]).

mod addresses;
mod btf;
mod changes;
mod counters;
pub mod desired;
pub mod maglev;
mod mesh;
mod metrics;
pub mod nodeport;
mod published;
mod services;
mod sockets;
pub mod sync;

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, MapError, PerCpuHashMap};
use aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLinkId, TcAttachOptions};
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, LinkOrder, ProgramError, SchedClassifier, SockOps,
    TcAttachType,
};
use aya::{Ebpf, EbpfLoader};
use aya_log::EbpfLogger;
use log::{LevelFilter, warn};
use skiff_ebpf_common::nodeport::{PACKET_COUNTERS_MAP, PacketCounters};
use skiff_ebpf_common::{
    AFFINITY_BACKENDS_MAP, AFFINITY_MAP, BACKENDS_MAP, Backend, BackendSlotKey, COUNTERS_MAP,
    DESTROY_TARGETS_MAP, REVERSE_MAP, SERVICES_MAP, SOCK_OFFSETS_GLOBAL, Service,
    ServiceBackendKey, ServiceKey,
};

pub use addresses::node_addresses;
pub use counters::{BackendCount, BackendPackets};
pub use mesh::{MeshMaps, OriginalDestination};
pub use metrics::{DataplaneMetrics, Stats};
pub use services::{
    Balancing, Capacity, Frontend, Protocol, ServiceError, ServiceMaps, ServiceTable,
};
pub use sockets::SocketError;

use published::PublishedServices;
use sockets::{KernelObject, SocketDestroyer};

/// The eBPF object built by `cargo xtask build` (see build.rs).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_OBJECT"));

/// The socket load balancer's programs, by their function names in the object.
const SOCK_LB_PROGRAMS: [&str; 8] = [
    "skiff_connect4",
    "skiff_connect6",
    "skiff_sendmsg4",
    "skiff_sendmsg6",
    "skiff_recvmsg4",
    "skiff_recvmsg6",
    "skiff_getpeername4",
    "skiff_getpeername6",
];

/// The mesh's TCP connect callback (see `skiff_ebpf_common::mesh`).
const MESH_SOCK_OPS_PROGRAM: &str = "skiff_mesh_sockops";
/// Strict mesh mode's tc program, for strict pods' host-side devices.
const MESH_STRICT_PROGRAM: &str = "skiff_mesh_strict";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening cgroup {}: {source}", path.display())]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("eBPF log reader: {0}")]
    Log(#[from] aya_log::Error),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    NodePort(#[from] nodeport::NodePortError),
    #[error("pin directory {}: {source}", path.display())]
    Pin { path: PathBuf, source: io::Error },
    #[error("eBPF program {name} on device {device}: {source}")]
    Device {
        name: &'static str,
        device: String,
        source: Box<ProgramError>,
    },
    #[error("eBPF program {name}: taking its bpf link: {reason}")]
    Link { name: &'static str, reason: String },
    #[error("pinning program {name} at {}: {reason}", path.display())]
    PinLink {
        name: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "the pinned map {} was made for other settings ({found}, this agent needs {wanted}): \
         stop the agent that made it with SIGTERM, or remove the pins, to change them",
        path.display()
    )]
    PinnedMapMismatch {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error(
        "service {frontend} is updated, but its connected UDP sockets to removed backends were not all destroyed: {source}"
    )]
    Sockets {
        frontend: Frontend,
        source: Box<SocketError>,
    },
}

/// Where and how to run the dataplane.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cgroup v2 directory whose processes (and descendants) are load-balanced.
    pub cgroup: PathBuf,
    /// Most verbose kernel-side log level emitted; `Off` compiles logging out of the
    /// verifier's view, so it costs nothing on the connect() path.
    pub ebpf_log: LevelFilter,
    /// A bpffs directory for the maps and links (see the module docs); none keeps
    /// everything owned by this process.
    pub pin_dir: Option<PathBuf>,
    pub capacity: Capacity,
    /// The packet-level NodePort path (off without devices).
    pub nodeport: nodeport::Settings,
    /// Network namespaces whose connected UDP sockets are checked when backends are
    /// removed, besides the agent's own: namespace files (as `ip netns` pins them)
    /// or directories of them (such as /run/netns, where pods' namespaces live).
    pub socket_netns: Vec<PathBuf>,
}

/// Where bpffs is mounted when the host has not mounted it yet.
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// A program attached by this dataplane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedProgram {
    pub name: &'static str,
    /// The kernel's program id (as `bpftool prog show` lists it).
    pub id: u32,
}

/// What [`Dataplane::detach`] detached.
#[derive(Debug)]
pub struct Detached {
    /// The socket load balancer's programs, from the cgroup.
    pub cgroup: Vec<AttachedProgram>,
    /// The NodePort programs, from their devices.
    pub tc: Vec<nodeport::TcProgram>,
}

/// How a program stays attached.
enum Attachment {
    /// Owned by this process: detached when it is dropped or the process dies.
    Owned(CgroupSockAddrLinkId),
    /// A bpf link owned by this process: detached when dropped.
    Link(FdLink),
    /// Pinned in bpffs: attached until the pin is removed.
    Pinned(PinnedLink),
}

/// The loaded and attached dataplane.
pub struct Dataplane {
    ebpf: Ebpf,
    cgroup: PathBuf,
    links: Vec<(AttachedProgram, Attachment)>,
    maps: KernelMaps,
    services: ServiceTable,
    published: PublishedServices,
    /// Frontends a previous agent left in pinned maps, with their backends.
    adopted: std::collections::HashMap<Frontend, Balancing>,
    pin_dir: Option<PathBuf>,
    /// None when this kernel cannot destroy sockets (see [`Dataplane::load`]).
    destroyer: Option<SocketDestroyer>,
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    nodeport: nodeport::NodePortLinks,
    /// Until the node proxy takes them.
    mesh: Option<MeshMaps>,
    /// Strict mode's links, by device; owned by this process, so a strict pod
    /// is open to plaintext while no agent runs.
    mesh_strict: std::collections::HashMap<String, SchedClassifierLinkId>,
}

impl Dataplane {
    /// Loads the programs and attaches them to `config.cgroup`. On error nothing
    /// stays attached: the links of a partly built dataplane are dropped.
    ///
    /// On a kernel without the `bpf_sock_destroy` kfunc (before 6.5) or without BTF,
    /// the load balancer works but connected UDP sockets are not destroyed when
    /// their backend goes; a warning says why.
    pub fn load(config: &Config) -> Result<Self, Error> {
        let cgroup_dir = File::open(&config.cgroup).map_err(|source| Error::Cgroup {
            path: config.cgroup.clone(),
            source,
        })?;
        if let Some(dir) = &config.pin_dir {
            prepare_pin_dir(dir)?;
        }
        let level = config.ebpf_log as u8; // Off=0 .. Trace=5, as aya-log's levels
        let object = KernelObject::prepare(EBPF_OBJECT);
        let mut loader = EbpfLoader::new();
        loader
            .override_global(aya_log::LEVEL, &level, true)
            .map_max_entries(SERVICES_MAP, config.capacity.services)
            .map_max_entries(BACKENDS_MAP, config.capacity.backend_slots);
        if let Ok(support) = &object.destroy {
            loader.btf(Some(&support.btf)).override_global(
                SOCK_OFFSETS_GLOBAL,
                &support.offsets,
                true,
            );
        }
        if let Some(dir) = &config.pin_dir {
            for name in PINNED_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        nodeport::configure(&mut loader, &config.nodeport, config.pin_dir.as_deref())?;
        let mut ebpf = loader.load(object.bytes())?;
        if let Some(dir) = &config.pin_dir {
            check_pinned_maps(dir, &config.capacity)?;
        }
        let logger = match config.ebpf_log {
            LevelFilter::Off => None,
            _ => Some(EbpfLogger::init(&mut ebpf)?),
        };
        let mut maps = KernelMaps::take(&mut ebpf, &config.nodeport)?;
        let mut services = ServiceTable::new(config.capacity);
        // Fresh maps are empty; pinned ones hold what the previous agent wrote.
        let mut adopted = services.adopt(&mut maps)?;
        let in_maps = maps.services().map_err(|source| ServiceError::Adopt {
            map: SERVICES_MAP,
            source,
        })?;
        maps.nodeport.adopt(&in_maps, &mut adopted)?;
        let mut published = PublishedServices::default();
        for (frontend, balancing) in &adopted {
            if let Some(id) = services.service_id(frontend) {
                published.replace(frontend, id, &balancing.backends);
            }
        }

        let mut links = Vec::with_capacity(SOCK_LB_PROGRAMS.len());
        for name in SOCK_LB_PROGRAMS {
            let program_error = |source| Error::Program { name, source };
            let program = typed_program::<CgroupSockAddr>(&mut ebpf, name)?;
            program.load().map_err(program_error)?;
            let id = program.info().map_err(program_error)?.id();
            // bpf links: attached in multi-program mode, so an agent at the root and a
            // test's dataplane in a child cgroup coexist, and a restarted agent's
            // programs run beside the previous agent's until it unpins those.
            let link = program
                .attach(&cgroup_dir, CgroupAttachMode::Single)
                .map_err(program_error)?;
            let attachment = match &config.pin_dir {
                None => Attachment::Owned(link),
                Some(dir) => {
                    let owned = program.take_link(link).map_err(program_error)?;
                    Attachment::Pinned(pin_link(name, name, owned.try_into(), dir)?)
                }
            };
            links.push((AttachedProgram { name, id }, attachment));
        }
        links.push(attach_mesh_sock_ops(&mut ebpf, &cgroup_dir, config)?);
        let mesh = Some(MeshMaps::take(&mut ebpf)?);
        typed_program::<SchedClassifier>(&mut ebpf, MESH_STRICT_PROGRAM)?
            .load()
            .map_err(|source| Error::Program {
                name: MESH_STRICT_PROGRAM,
                source,
            })?;
        let destroyer = match &object.destroy {
            Ok(support) => Some(
                SocketDestroyer::load(&mut ebpf, &support.btf, config.socket_netns.clone())
                    .map_err(|source| Error::Program {
                        name: sockets::DESTROY_PROGRAM,
                        source,
                    })?,
            ),
            Err(reason) => {
                warn!(
                    "connected UDP sockets will not be destroyed when their backend is removed: {reason}"
                );
                None
            }
        };
        let nodeport = nodeport::NodePortLinks::attach(
            &mut ebpf,
            &config.nodeport,
            config.pin_dir.as_deref(),
        )?;
        Ok(Self {
            ebpf,
            cgroup: config.cgroup.clone(),
            links,
            maps,
            services,
            published,
            adopted,
            pin_dir: config.pin_dir.clone(),
            destroyer,
            logger,
            nodeport,
            mesh,
            mesh_strict: std::collections::HashMap::new(),
        })
    }

    /// Lets only mesh tunnels (and the node itself) open TCP connections to the
    /// pod behind `device`, its host-side link (see `skiff_ebpf_common::mesh`).
    pub fn attach_mesh_strict(&mut self, device: &str) -> Result<(), Error> {
        if self.mesh_strict.contains_key(device) {
            return Ok(());
        }
        let name = MESH_STRICT_PROGRAM;
        let link = typed_program::<SchedClassifier>(&mut self.ebpf, name)?
            .attach_with_options(
                device,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|source| Error::Device {
                name,
                device: device.to_string(),
                source: Box::new(source),
            })?;
        self.mesh_strict.insert(device.to_string(), link);
        Ok(())
    }

    /// Lifts strict mode from `device` (nothing to do when it is not there).
    pub fn detach_mesh_strict(&mut self, device: &str) -> Result<(), Error> {
        let Some(link) = self.mesh_strict.remove(device) else {
            return Ok(());
        };
        let name = MESH_STRICT_PROGRAM;
        typed_program::<SchedClassifier>(&mut self.ebpf, name)?
            .detach(link)
            .map_err(|source| Error::Device {
                name,
                device: device.to_string(),
                source: Box::new(source),
            })
    }

    /// The mesh's maps, for the node proxy (once; None afterwards).
    pub fn take_mesh_maps(&mut self) -> Option<MeshMaps> {
        self.mesh.take()
    }

    /// Frontends found in pinned maps at load, with their backends (empty for a
    /// fresh dataplane). The caller compares them with what it wants and removes
    /// the ones it no longer wants.
    pub fn take_adopted(&mut self) -> std::collections::HashMap<Frontend, Balancing> {
        std::mem::take(&mut self.adopted)
    }

    /// Every published frontend with its backends, slot by slot.
    pub fn frontends(&self) -> Vec<(Frontend, Vec<SocketAddr>)> {
        self.published.frontends()
    }

    /// How full the maps are.
    pub fn stats(&self) -> Stats {
        self.services.stats()
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    pub fn attached(&self) -> impl Iterator<Item = &AttachedProgram> {
        self.links.iter().map(|(program, _)| program)
    }

    /// The NodePort programs and the devices they are attached to.
    pub fn nodeport_attached(&self) -> impl Iterator<Item = &nodeport::TcProgram> {
        self.nodeport.attached()
    }

    /// The reader of kernel-side log records, when logging is on. The caller polls
    /// its fd and calls `flush`.
    pub fn take_logger(&mut self) -> Option<EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// Sets the backends of a service (see [`ServiceTable::upsert`]).
    ///
    /// Backends it no longer has lose their counters, and for a UDP service the
    /// connected sockets skiff pinned to them are destroyed once the new set is
    /// published, so their owners reconnect to a live backend.
    pub fn upsert_service(
        &mut self,
        frontend: &Frontend,
        balancing: &Balancing,
    ) -> Result<(), Error> {
        self.services.upsert(&mut self.maps, frontend, balancing)?;
        let Some(id) = self.services.service_id(frontend) else {
            return Ok(()); // upsert() keeps every service it published
        };
        let removed = self.published.replace(frontend, id, &balancing.backends);
        self.forget_backends(frontend, id, &removed)
    }

    /// Removes a service; false when it was not present. Its counters go, and for a
    /// UDP service its connected sockets are destroyed as in
    /// [`upsert_service`](Self::upsert_service).
    pub fn remove_service(&mut self, frontend: &Frontend) -> Result<bool, Error> {
        let id = self.services.service_id(frontend);
        let removed = self.services.remove(&mut self.maps, frontend)?;
        if let (Some(published), Some(id)) = (self.published.remove(frontend), id) {
            self.forget_backends(frontend, id, &published.backends)?;
        }
        Ok(removed)
    }

    /// Detaches every program, reporting the first failure, then unloads them and
    /// removes the pins.
    pub fn detach(mut self) -> Result<Detached, Error> {
        let mut detached = Vec::with_capacity(self.links.len());
        for (program, attachment) in std::mem::take(&mut self.links) {
            let name = program.name;
            match attachment {
                Attachment::Owned(link) => typed_program::<CgroupSockAddr>(&mut self.ebpf, name)?
                    .detach(link)
                    .map_err(|source| Error::Program { name, source })?,
                Attachment::Link(link) => drop(link),
                // Without its pin, the link goes with the last descriptor, dropped here.
                Attachment::Pinned(link) => drop(link.unpin().map_err(|source| Error::Pin {
                    path: self.pin_dir.clone().unwrap_or_default(),
                    source,
                })?),
            }
            detached.push(program);
        }
        let nodeport = std::mem::replace(&mut self.nodeport, nodeport::NodePortLinks::none());
        let tc = nodeport.detach(&mut self.ebpf)?;
        if let Some(dir) = &self.pin_dir {
            std::fs::remove_dir_all(dir).map_err(|source| Error::Pin {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(Detached {
            cgroup: detached,
            tc,
        })
    }
}

/// Loads the mesh's sock_ops program and attaches it to the cgroup, pinned like
/// the load balancer's when there is a pin directory.
fn attach_mesh_sock_ops(
    ebpf: &mut Ebpf,
    cgroup_dir: &File,
    config: &Config,
) -> Result<(AttachedProgram, Attachment), Error> {
    let name = MESH_SOCK_OPS_PROGRAM;
    let program_error = |source| Error::Program { name, source };
    let program = typed_program::<SockOps>(ebpf, name)?;
    program.load().map_err(program_error)?;
    let id = program.info().map_err(program_error)?.id();
    let link = program
        .attach(cgroup_dir, CgroupAttachMode::Single)
        .map_err(program_error)?;
    let owned = program.take_link(link).map_err(program_error)?;
    let attachment = match &config.pin_dir {
        Some(dir) => Attachment::Pinned(pin_link(name, name, owned.try_into(), dir)?),
        None => Attachment::Link(owned.try_into().map_err(|e| Error::Link {
            name,
            reason: error_chain(&e),
        })?),
    };
    Ok((AttachedProgram { name, id }, attachment))
}

/// Maps kept in bpffs across agent restarts: the services, the reverse
/// translations of sockets already balanced, the counters, and session affinity
/// (clients keep their backends across a restart). The NodePort path's own maps
/// are listed in [`nodeport`].
const PINNED_MAPS: [&str; 7] = [
    SERVICES_MAP,
    BACKENDS_MAP,
    REVERSE_MAP,
    COUNTERS_MAP,
    PACKET_COUNTERS_MAP,
    AFFINITY_MAP,
    AFFINITY_BACKENDS_MAP,
];

/// Mounts bpffs at [`BPFFS`] if the host has not, and makes `dir` (0700) on it.
fn prepare_pin_dir(dir: &Path) -> Result<(), Error> {
    let pin_error = |source| Error::Pin {
        path: dir.to_path_buf(),
        source,
    };
    if dir.starts_with(BPFFS) && !is_bpffs(Path::new(BPFFS)).map_err(pin_error)? {
        let none = c"bpffs";
        let target = c"/sys/fs/bpf";
        let fstype = c"bpf";
        // SAFETY: all three are NUL-terminated strings; no data argument.
        let mounted = unsafe {
            libc::mount(
                none.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if mounted != 0 {
            return Err(pin_error(io::Error::last_os_error()));
        }
    }
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.join("links"))
        .map_err(pin_error)?;
    if !is_bpffs(dir).map_err(pin_error)? {
        return Err(pin_error(io::Error::other(
            "not on a BPF file system (bpffs)",
        )));
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: path is NUL-terminated and stat is written by the call before it is read.
    if unsafe { libc::statfs(path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs succeeded, so it filled `stat`.
    Ok(unsafe { stat.assume_init() }.f_type as u32 == BPF_FS_MAGIC)
}

/// Pins `link` at `dir/links/<pin>` in place of any previous agent's link, which
/// is detached when its pin is replaced (after this one is attached). `name` is the
/// program, for errors.
fn pin_link(
    name: &'static str,
    pin: &str,
    link: Result<FdLink, aya::programs::links::LinkError>,
    dir: &Path,
) -> Result<PinnedLink, Error> {
    let path = dir.join("links").join(pin);
    let fail = |error: &dyn std::error::Error| Error::PinLink {
        name,
        path: path.clone(),
        reason: error_chain(error),
    };
    // bpffs refuses names with dots.
    let fresh = dir.join("links").join(format!("new-{pin}"));
    let _ = std::fs::remove_file(&fresh);
    let pinned = link
        .map_err(|e| fail(&e))?
        .pin(&fresh)
        .map_err(|e| fail(&e))?;
    std::fs::rename(&fresh, &path).map_err(|e| fail(&e))?;
    drop(pinned); // it names the old path; the pin holds the link now
    PinnedLink::from_pin(&path).map_err(|e| fail(&e))
}

/// An error and its sources, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    text
}

/// Refuses pinned maps whose shape differs from what this agent would create
/// (capacity flags changed, or another skiff version's layout).
fn check_pinned_maps(dir: &Path, capacity: &Capacity) -> Result<(), Error> {
    use skiff_ebpf_common::{Backend, BackendSlotKey, Service, ServiceKey};
    let shapes = [
        (
            SERVICES_MAP,
            size_of::<ServiceKey>(),
            size_of::<Service>(),
            capacity.services,
        ),
        (
            BACKENDS_MAP,
            size_of::<BackendSlotKey>(),
            size_of::<Backend>(),
            capacity.backend_slots,
        ),
    ];
    for (name, key, value, entries) in shapes {
        let path = dir.join(name);
        let info =
            aya::maps::MapInfo::from_pin(&path).map_err(|source| Error::Map { name, source })?;
        let found = (
            info.key_size() as usize,
            info.value_size() as usize,
            info.max_entries(),
        );
        if found != (key, value, entries) {
            return Err(Error::PinnedMapMismatch {
                path,
                found: format!(
                    "key {} bytes, value {} bytes, {} entries",
                    found.0, found.1, found.2
                ),
                wanted: format!("key {key} bytes, value {value} bytes, {entries} entries"),
            });
        }
    }
    Ok(())
}

/// Program `name` of the loaded object, as its kind (`P`).
fn typed_program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, Error>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(Error::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

/// The kernel maps of the socket load balancer.
struct KernelMaps {
    services: HashMap<MapData, ServiceKey, Service>,
    backends: HashMap<MapData, BackendSlotKey, Backend>,
    nodeport: nodeport::NodePortMaps,
    counters: PerCpuHashMap<MapData, ServiceBackendKey, u64>,
    /// Packets and bytes per service backend on the NodePort path.
    packets: PerCpuHashMap<MapData, ServiceBackendKey, PacketCounters>,
    destroy_targets: HashMap<MapData, ServiceBackendKey, u8>,
    affinity_backends: HashMap<MapData, ServiceBackendKey, u8>,
}

impl KernelMaps {
    fn take(ebpf: &mut Ebpf, nodeport: &nodeport::Settings) -> Result<Self, Error> {
        Ok(Self {
            services: take_map(ebpf, SERVICES_MAP)?,
            backends: take_map(ebpf, BACKENDS_MAP)?,
            nodeport: nodeport::NodePortMaps::take(ebpf, nodeport)?,
            counters: take_map(ebpf, COUNTERS_MAP)?,
            packets: take_map(ebpf, PACKET_COUNTERS_MAP)?,
            destroy_targets: take_map(ebpf, DESTROY_TARGETS_MAP)?,
            affinity_backends: take_map(ebpf, AFFINITY_BACKENDS_MAP)?,
        })
    }
}

/// Takes map `name` out of the loaded object as a typed map.
fn take_map<M: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<M, Error> {
    let map = ebpf
        .take_map(name)
        .ok_or(Error::Missing { kind: "map", name })?;
    M::try_from(map).map_err(|source| Error::Map { name, source })
}

impl ServiceMaps for KernelMaps {
    fn put_service(&mut self, key: &ServiceKey, service: &Service) -> io::Result<()> {
        self.services.insert(key, service, 0).map_err(into_io)
    }

    fn remove_service(&mut self, key: &ServiceKey) -> io::Result<()> {
        absent_is_ok(self.services.remove(key))
    }

    fn put_backend(&mut self, key: &BackendSlotKey, backend: &Backend) -> io::Result<()> {
        self.backends.insert(key, backend, 0).map_err(into_io)
    }

    fn remove_backend(&mut self, key: &BackendSlotKey) -> io::Result<()> {
        absent_is_ok(self.backends.remove(key))
    }

    fn services(&self) -> io::Result<Vec<(ServiceKey, Service)>> {
        self.services.iter().map(|e| e.map_err(into_io)).collect()
    }

    fn backend_slots(&self) -> io::Result<Vec<(BackendSlotKey, Backend)>> {
        self.backends.iter().map(|e| e.map_err(into_io)).collect()
    }

    fn table_written(
        &mut self,
        key: &ServiceKey,
        id: u32,
        table: u8,
        backends: &[Backend],
    ) -> io::Result<()> {
        self.nodeport.table_written(key, id, table, backends)
    }

    fn service_removed(&mut self, key: &ServiceKey, id: u32) -> io::Result<()> {
        self.nodeport.service_removed(key, id)
    }

    fn put_affinity_backend(&mut self, key: &ServiceBackendKey) -> io::Result<()> {
        self.affinity_backends.insert(key, 1, 0).map_err(into_io)
    }

    fn remove_affinity_backend(&mut self, key: &ServiceBackendKey) -> io::Result<()> {
        absent_is_ok(self.affinity_backends.remove(key))
    }

    fn affinity_backends(&self) -> io::Result<Vec<ServiceBackendKey>> {
        self.affinity_backends
            .keys()
            .map(|k| k.map_err(into_io))
            .collect()
    }
}

fn into_io(error: MapError) -> io::Error {
    match error {
        MapError::SyscallError(e) => e.io_error,
        other => io::Error::other(other),
    }
}

fn absent_is_ok(result: Result<(), MapError>) -> io::Result<()> {
    match result.map_err(into_io) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
