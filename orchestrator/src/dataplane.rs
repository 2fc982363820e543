//! The eBPF dataplane: loads skiff's programs (embedded in the binary), attaches the
//! socket load balancer to a cgroup v2 directory, and keeps the service maps.
//!
//! Programs are attached through bpf links owned by this process: dropping the
//! [`Dataplane`] (or the process dying) detaches them and unloads everything.

mod addresses;
pub mod desired;
mod services;
pub mod sync;

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, MapError};
use aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, ProgramError};
use aya::{Ebpf, EbpfLoader};
use aya_log::EbpfLogger;
use log::LevelFilter;
use skiff_ebpf_common::{BACKENDS_MAP, Backend, BackendSlotKey, SERVICES_MAP, Service, ServiceKey};

pub use addresses::node_addresses;
pub use services::{Frontend, Protocol, ServiceError, ServiceMaps, ServiceTable};

/// The eBPF object built by `cargo xtask build` (see build.rs).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_OBJECT"));

/// The socket load balancer's programs, by their function names in the object.
const SOCK_LB_PROGRAMS: [&str; 2] = ["skiff_connect4", "skiff_connect6"];

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
}

/// Where and how to run the dataplane.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cgroup v2 directory whose processes (and descendants) are load-balanced.
    pub cgroup: PathBuf,
    /// Most verbose kernel-side log level emitted; `Off` compiles logging out of the
    /// verifier's view, so it costs nothing on the connect() path.
    pub ebpf_log: LevelFilter,
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
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
}

impl Dataplane {
    /// Loads the programs and attaches them to `config.cgroup`. On error nothing
    /// stays attached: the links of a partly built dataplane are dropped.
    pub fn load(config: &Config) -> Result<Self, Error> {
        let cgroup_dir = File::open(&config.cgroup).map_err(|source| Error::Cgroup {
            path: config.cgroup.clone(),
            source,
        })?;
        let level = config.ebpf_log as u8; // Off=0 .. Trace=5, as aya-log's levels
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, true)
            .load(EBPF_OBJECT)?;
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
        Ok(Self {
            ebpf,
            cgroup: config.cgroup.clone(),
            links,
            maps,
            services: ServiceTable::default(),
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

    /// Sets the backends of a service (see [`ServiceTable::upsert`]).
    pub fn upsert_service(
        &mut self,
        frontend: &Frontend,
        backends: &[SocketAddr],
    ) -> Result<(), Error> {
        Ok(self.services.upsert(&mut self.maps, frontend, backends)?)
    }

    /// Removes a service; false when it was not present.
    pub fn remove_service(&mut self, frontend: &Frontend) -> Result<bool, Error> {
        Ok(self.services.remove(&mut self.maps, frontend)?)
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

/// The kernel maps of the socket load balancer.
struct KernelMaps {
    services: HashMap<MapData, ServiceKey, Service>,
    backends: HashMap<MapData, BackendSlotKey, Backend>,
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
        Ok(Self {
            services: take_map(ebpf, SERVICES_MAP)?,
            backends: take_map(ebpf, BACKENDS_MAP)?,
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
