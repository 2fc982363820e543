//! The eBPF dataplane: loads skiff's programs (embedded in the binary), attaches the
//! socket load balancer to a cgroup v2 directory, and keeps the service maps.
//!
//! Programs are attached through bpf links owned by this process: dropping the
//! [`Dataplane`] (or the process dying) detaches them and unloads everything.
//!
//! When an update removes backends, their counters go, and for UDP services the
//! connected sockets skiff pinned to them are destroyed (see [`sockets`]).

mod btf;
mod changes;
mod counters;
mod published;
mod services;
mod sockets;

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, MapError, PerCpuHashMap};
use aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, ProgramError};
use aya::{Ebpf, EbpfLoader};
use aya_log::EbpfLogger;
use log::LevelFilter;
use log::warn;
use skiff_ebpf_common::{
    BACKENDS_MAP, Backend, BackendSlotKey, COUNTERS_MAP, DESTROY_TARGETS_MAP, SERVICES_MAP,
    SOCK_OFFSETS_GLOBAL, Service, ServiceBackendKey, ServiceKey,
};

pub use counters::BackendCount;
pub use services::{Frontend, Protocol, ServiceError, ServiceMaps, ServiceTable};
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
    /// Network namespaces whose connected UDP sockets are checked when backends are
    /// removed, besides the agent's own: namespace files (as `ip netns` pins them)
    /// or directories of them (such as /run/netns, where pods' namespaces live).
    pub socket_netns: Vec<PathBuf>,
}

/// A program attached by this dataplane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedProgram {
    pub name: &'static str,
    /// The kernel's program id (as `bpftool prog show` lists it).
    pub id: u32,
}

/// The loaded and attached dataplane.
pub struct Dataplane {
    ebpf: Ebpf,
    cgroup: PathBuf,
    links: Vec<(AttachedProgram, CgroupSockAddrLinkId)>,
    maps: KernelMaps,
    services: ServiceTable,
    published: PublishedServices,
    /// None when this kernel cannot destroy sockets (see [`Dataplane::load`]).
    destroyer: Option<SocketDestroyer>,
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
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
        let level = config.ebpf_log as u8; // Off=0 .. Trace=5, as aya-log's levels
        let object = KernelObject::prepare(EBPF_OBJECT);
        let mut loader = EbpfLoader::new();
        loader.override_global(aya_log::LEVEL, &level, true);
        if let Ok(support) = &object.destroy {
            loader.btf(Some(&support.btf)).override_global(
                SOCK_OFFSETS_GLOBAL,
                &support.offsets,
                true,
            );
        }
        let mut ebpf = loader.load(object.bytes())?;
        let logger = match config.ebpf_log {
            LevelFilter::Off => None,
            _ => Some(EbpfLogger::init(&mut ebpf)?),
        };
        let maps = KernelMaps::take(&mut ebpf)?;

        let mut links = Vec::with_capacity(SOCK_LB_PROGRAMS.len());
        for name in SOCK_LB_PROGRAMS {
            let program_error = |source| Error::Program { name, source };
            let program = sock_addr_program(&mut ebpf, name)?;
            program.load().map_err(program_error)?;
            let id = program.info().map_err(program_error)?.id();
            // bpf links: attached in multi-program mode, so an agent at the root and a
            // test's dataplane in a child cgroup coexist.
            let link = program
                .attach(&cgroup_dir, CgroupAttachMode::Single)
                .map_err(program_error)?;
            links.push((AttachedProgram { name, id }, link));
        }
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
        Ok(Self {
            ebpf,
            cgroup: config.cgroup.clone(),
            links,
            maps,
            services: ServiceTable::default(),
            published: PublishedServices::default(),
            destroyer,
            logger,
        })
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    pub fn attached(&self) -> impl Iterator<Item = &AttachedProgram> {
        self.links.iter().map(|(program, _)| program)
    }

    /// The reader of kernel-side log records, when logging is on. The caller polls
    /// its fd and calls `flush`.
    pub fn take_logger(&mut self) -> Option<EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// Sets the backends of a service (see [`ServiceTable::upsert`]). Backends it no
    /// longer has lose their counters, and for a UDP service the connected sockets
    /// skiff pinned to them are destroyed once the new set is published, so their
    /// owners reconnect to a live backend.
    pub fn upsert_service(
        &mut self,
        frontend: &Frontend,
        backends: &[SocketAddr],
    ) -> Result<(), Error> {
        self.services.upsert(&mut self.maps, frontend, backends)?;
        let Some(id) = self.services.service_id(frontend) else {
            return Ok(()); // upsert() keeps every service it published
        };
        let removed = self.published.replace(frontend, id, backends);
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

    /// Detaches every program, reporting the first failure, then unloads them.
    pub fn detach(mut self) -> Result<Vec<AttachedProgram>, Error> {
        let mut detached = Vec::with_capacity(self.links.len());
        for (program, link) in std::mem::take(&mut self.links) {
            let name = program.name;
            sock_addr_program(&mut self.ebpf, name)?
                .detach(link)
                .map_err(|source| Error::Program { name, source })?;
            detached.push(program);
        }
        Ok(detached)
    }
}

fn sock_addr_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr, Error> {
    ebpf.program_mut(name)
        .ok_or(Error::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

/// The kernel maps of the socket load balancer that user space writes or reads.
struct KernelMaps {
    services: HashMap<MapData, ServiceKey, Service>,
    backends: HashMap<MapData, BackendSlotKey, Backend>,
    counters: PerCpuHashMap<MapData, ServiceBackendKey, u64>,
    destroy_targets: HashMap<MapData, ServiceBackendKey, u8>,
}

impl KernelMaps {
    fn take(ebpf: &mut Ebpf) -> Result<Self, Error> {
        fn take_map<K: aya::Pod, V: aya::Pod>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<HashMap<MapData, K, V>, Error> {
            let map = ebpf
                .take_map(name)
                .ok_or(Error::Missing { kind: "map", name })?;
            HashMap::try_from(map).map_err(|source| Error::Map { name, source })
        }
        let counters = ebpf.take_map(COUNTERS_MAP).ok_or(Error::Missing {
            kind: "map",
            name: COUNTERS_MAP,
        })?;
        Ok(Self {
            services: take_map(ebpf, SERVICES_MAP)?,
            backends: take_map(ebpf, BACKENDS_MAP)?,
            counters: PerCpuHashMap::try_from(counters).map_err(|source| Error::Map {
                name: COUNTERS_MAP,
                source,
            })?,
            destroy_targets: take_map(ebpf, DESTROY_TARGETS_MAP)?,
        })
    }
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
