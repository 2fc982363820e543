//! TCP backends that answer every connection with their name and close it.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

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
