//! The node agent's lifecycle: attach the dataplane, serve until SIGINT or SIGTERM,
//! then detach everything it attached so nothing is left behind on the host.

use std::io;
use std::path::PathBuf;

use aya_log::EbpfLogger;
use log::{LevelFilter, info, warn};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

use crate::{cgroup, dataplane};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
    #[error(transparent)]
    Dataplane(#[from] dataplane::Error),
    #[error("installing the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: io::Error,
    },
}

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cgroup v2 directory to attach to; the hierarchy's root when unset, so
    /// every process on the node (host and pods) is load-balanced.
    pub cgroup: Option<PathBuf>,
    /// Kernel-side eBPF log level (off by default).
    pub ebpf_log: LevelFilter,
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), Error> {
    let cgroup = match config.cgroup {
        Some(path) => path,
        None => cgroup::v2_mount_point()?,
    };
    // Handlers first: a signal that arrives during start-up still gets a clean exit.
    let handler = |kind, name| {
        signal(kind).map_err(|source| Error::Signal {
            signal: name,
            source,
        })
    };
    let mut interrupt = handler(SignalKind::interrupt(), "SIGINT")?;
    let mut terminate = handler(SignalKind::terminate(), "SIGTERM")?;

    let mut dataplane = dataplane::Dataplane::load(&dataplane::Config {
        cgroup,
        ebpf_log: config.ebpf_log,
    })?;
    for program in dataplane.attached() {
        info!(
            "attached {} (program id {}) to {}",
            program.name,
            program.id,
            dataplane.cgroup().display()
        );
    }
    let log_reader = dataplane
        .take_logger()
        .map(|l| tokio::spawn(read_ebpf_logs(l)));
    info!("skiff agent ready");

    let received = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    info!("{received} received, shutting down");
    if let Some(task) = log_reader {
        task.abort();
    }
    let cgroup = dataplane.cgroup().to_path_buf();
    for program in dataplane.detach()? {
        info!(
            "detached {} (program id {}) from {}",
            program.name,
            program.id,
            cgroup.display()
        );
    }
    info!("skiff agent stopped");
    Ok(())
}

/// Forwards kernel-side log records to the `log` crate as they arrive.
async fn read_ebpf_logs(logger: EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer's fd for as long as it lives, and the
    // AsyncFd owns the logger.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => return warn!("eBPF logs unavailable: {e}"),
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(guard) => guard,
            Err(e) => return warn!("eBPF log reader stopped: {e}"),
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
