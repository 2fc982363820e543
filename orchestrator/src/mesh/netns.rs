//! Sockets inside a pod's network namespace, as Istio ztunnel's in-pod mode
//! opens them: a thread of the agent enters the namespace (setns), creates the
//! socket and hands it back; a socket stays in the namespace it was created in,
//! and tokio drives it from any thread.
//!
//! [`PodNetns`] keeps one such thread per pod for as long as the pod is served,
//! so a new connection costs a message to it rather than a thread.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::runtime::netns::loopback_up;

/// `SO_NETNS_COOKIE` (Linux 5.14): the namespace's cookie, as eBPF programs see it.
const SO_NETNS_COOKIE: libc::c_int = 71;
/// Pending connections a proxy listener queues.
const BACKLOG: i32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {}: {source}", path.display())]
    Enter { path: PathBuf, source: io::Error },
    #[error("network namespace {}: its thread has stopped", path.display())]
    Stopped { path: PathBuf },
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread inside one pod's network namespace that creates sockets there.
pub struct PodNetns {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
    /// The namespace's cookie (`bpf_get_netns_cookie` in the kernel).
    cookie: u64,
}

impl PodNetns {
    /// Starts the thread in the namespace pinned at `path`; it ends when this is
    /// dropped.
    pub fn enter(path: &Path) -> Result<Self, NetnsError> {
        let enter_error = |source| NetnsError::Enter {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(enter_error)?;
        let (jobs, receiver) = mpsc::channel::<Job>();
        let (entered, entered_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("mesh-netns".into())
            .spawn(move || {
                // SAFETY: setns changes only this thread's namespace; the fd is open.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let _ = entered.send(Err(io::Error::last_os_error()));
                    return;
                }
                drop(file);
                // The proxy listens on loopback; pods an older agent made have it down.
                let _ = entered.send(loopback_up().and_then(|()| netns_cookie()));
                for job in receiver {
                    job();
                }
            })
            .map_err(enter_error)?;
        let cookie = entered_rx
            .recv()
            .map_err(|_| enter_error(io::Error::other("the namespace thread panicked")))?
            .map_err(enter_error)?;
        Ok(Self {
            path: path.to_path_buf(),
            jobs,
            cookie,
        })
    }

    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// Runs `make` on the namespace's thread and returns what it made.
    async fn run<T: Send + 'static>(
        &self,
        make: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let stopped = || {
            io::Error::other(NetnsError::Stopped {
                path: self.path.clone(),
            })
        };
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(make());
            }))
            .map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    /// A listener on `addr` in the namespace; `[::]` accepts IPv4 too.
    pub async fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let listener = self
            .run(move || {
                let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
                if addr.is_ipv6() {
                    socket.set_only_v6(false)?;
                }
                socket.set_reuse_address(true)?;
                socket.set_nonblocking(true)?;
                socket.bind(&addr.into())?;
                socket.listen(BACKLOG)?;
                Ok(std::net::TcpListener::from(socket))
            })
            .await?;
        TcpListener::from_std(listener)
    }

    /// A TCP connection to `addr` from the namespace.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = self
            .run(move || {
                let socket =
                    Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
                socket.set_nonblocking(true)?;
                Ok(std::net::TcpStream::from(socket))
            })
            .await?;
        let stream = TcpSocket::from_std_stream(socket).connect(addr).await?;
        // Small writes (handshakes, interactive traffic) go out at once.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// The cookie of the calling thread's network namespace.
fn netns_cookie() -> io::Result<u64> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: the buffer is a u64 and `len` says so; the fd is open.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_made_in_a_namespace_reach_each_other_there() {
        // The agent's own namespace stands in for a pod's.
        let netns = PodNetns::enter(Path::new("/proc/self/ns/net")).expect("enter");
        assert_eq!(netns.cookie(), netns_cookie().expect("cookie"));
        let listener = netns
            .listen("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("listen");
        let addr = listener.local_addr().expect("addr");
        let (connected, accepted) = tokio::join!(netns.connect(addr), listener.accept());
        let connected = connected.expect("connect");
        let (_, peer) = accepted.expect("accept");
        assert_eq!(peer, connected.local_addr().expect("local"));
    }

    #[test]
    fn a_missing_namespace_is_named_in_the_error() {
        let error = PodNetns::enter(Path::new("/run/netns/skiff-no-such-pod"))
            .err()
            .expect("no namespace");
        assert!(
            error.to_string().contains("/run/netns/skiff-no-such-pod"),
            "{error}"
        );
    }
}
