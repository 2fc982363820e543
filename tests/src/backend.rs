//! Backends that answer with their name: TCP ones answer every connection and close
//! it, UDP ones answer every datagram.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::NetNs;

/// A listener inside a namespace; stops serving on drop.
pub struct NamedBackend {
    name: String,
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    server: Option<JoinHandle<()>>,
}

impl NamedBackend {
    /// Listens on `bind` (port 0 picks a free one) inside `netns`.
    pub fn start(netns: &NetNs, name: &str, bind: SocketAddr) -> Self {
        let listener = netns.run(|| TcpListener::bind(bind).expect("bind backend"));
        let addr = listener.local_addr().expect("local addr");
        let listener = Arc::new(listener);
        let server = {
            let (listener, reply) = (listener.clone(), format!("{name}\n"));
            std::thread::spawn(move || {
                // accept() fails once drop shuts the listener down.
                while let Ok((mut conn, _)) = listener.accept() {
                    let _ = conn.write_all(reply.as_bytes());
                }
            })
        };
        Self {
            name: name.to_string(),
            addr,
            listener,
            server: Some(server),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for NamedBackend {
    fn drop(&mut self) {
        // SAFETY: shutting down a listening socket we own wakes the blocked accept().
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

/// A UDP backend inside a namespace: answers every datagram with its name (to the
/// sender's address) and counts what it received; stops serving on drop.
pub struct UdpBackend {
    name: String,
    addr: SocketAddr,
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
}

impl UdpBackend {
    /// Binds `bind` (port 0 picks a free one) inside `netns`.
    pub fn start(netns: &NetNs, name: &str, bind: SocketAddr) -> Self {
        let socket = netns.run(|| UdpSocket::bind(bind).expect("bind UDP backend"));
        let addr = socket.local_addr().expect("local addr");
        // The server checks for a stop every 50 ms.
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let (received, stop) = (received.clone(), stop.clone());
            let reply = name.as_bytes().to_vec();
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = socket.recv_from(&mut buf) {
                        received.fetch_add(1, Ordering::Relaxed);
                        let _ = socket.send_to(&reply, from);
                    }
                }
            })
        };
        Self {
            name: name.to_string(),
            addr,
            received,
            stop,
            server: Some(server),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams received so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}
