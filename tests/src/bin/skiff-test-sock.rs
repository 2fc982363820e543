//! A socket client for the integration tests, driven line by line on stdin so a test
//! can act between steps (remove a backend, then send again). Run as a child process
//! so it can be placed in a test's network namespace and cgroup.
//!
//! One line of output per command (`sendto` prints COUNT lines); failures print
//! `error <errno>` (a receive timeout is `error 11`):
//!
//! - `udp-connect ADDR`: a new UDP socket, connect()ed to ADDR -> `ok`
//! - `tcp-connect ADDR`: a new TCP connection to ADDR -> `ok`
//! - `send`: sends `ping` on the connected UDP socket -> `ok`
//! - `recv`: waits up to 2 s for a datagram on it -> its text
//! - `peer`: getpeername() of the current socket -> the address
//! - `sendto ADDR COUNT`: from one new unconnected UDP socket, COUNT times sendto()
//!   ADDR and recvfrom() the reply -> `<reply> <source address>` per datagram
//! - `quit`

use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

enum Current {
    None,
    Udp(UdpSocket),
    Tcp(TcpStream),
}

fn main() -> ExitCode {
    let mut current = Current::None;
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else {
            return ExitCode::FAILURE;
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let out = match words.as_slice() {
            ["quit"] => return ExitCode::SUCCESS,
            ["udp-connect", addr] => match parse(addr).and_then(udp_connect) {
                Ok(socket) => {
                    current = Current::Udp(socket);
                    "ok".to_string()
                }
                Err(e) => e,
            },
            ["tcp-connect", addr] => match parse(addr)
                .and_then(|a| TcpStream::connect_timeout(&a, TIMEOUT).map_err(errno))
            {
                Ok(stream) => {
                    current = Current::Tcp(stream);
                    "ok".to_string()
                }
                Err(e) => e,
            },
            ["send"] => match &current {
                Current::Udp(s) => s
                    .send(b"ping")
                    .map(|_| "ok".to_string())
                    .unwrap_or_else(errno),
                _ => "no UDP socket".to_string(),
            },
            ["recv"] => match &current {
                Current::Udp(s) => {
                    let mut buf = [0u8; 512];
                    match s.recv(&mut buf) {
                        Ok(n) => String::from_utf8_lossy(&buf[..n]).trim().to_string(),
                        Err(e) => errno(e),
                    }
                }
                _ => "no UDP socket".to_string(),
            },
            ["peer"] => match &current {
                Current::Udp(s) => s.peer_addr().map(|a| a.to_string()).unwrap_or_else(errno),
                Current::Tcp(s) => s.peer_addr().map(|a| a.to_string()).unwrap_or_else(errno),
                Current::None => "no socket".to_string(),
            },
            ["sendto", addr, count] => match (parse(addr), count.parse::<usize>()) {
                (Ok(addr), Ok(count)) => sendto(addr, count),
                _ => "bad sendto".to_string(),
            },
            _ => format!("unknown command {line:?}"),
        };
        if writeln!(stdout, "{out}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn parse(addr: &str) -> Result<SocketAddr, String> {
    addr.parse().map_err(|_| format!("bad address {addr}"))
}

fn errno(e: std::io::Error) -> String {
    format!("error {}", e.raw_os_error().unwrap_or(-1))
}

fn unbound(addr: SocketAddr) -> Result<UdpSocket, String> {
    let any: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|_| "any".to_string())?
    } else {
        "[::]:0".parse().map_err(|_| "any".to_string())?
    };
    let socket = UdpSocket::bind(any).map_err(errno)?;
    socket.set_read_timeout(Some(TIMEOUT)).map_err(errno)?;
    Ok(socket)
}

fn udp_connect(addr: SocketAddr) -> Result<UdpSocket, String> {
    let socket = unbound(addr)?;
    socket.connect(addr).map_err(errno)?;
    Ok(socket)
}

/// COUNT lines: each reply and where it came from.
fn sendto(addr: SocketAddr, count: usize) -> String {
    let socket = match unbound(addr) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let mut lines = Vec::with_capacity(count);
    let mut buf = [0u8; 512];
    for _ in 0..count {
        let line = match socket.send_to(b"ping", addr) {
            Err(e) => errno(e),
            Ok(_) => match socket.recv_from(&mut buf) {
                Ok((n, from)) => format!("{} {from}", String::from_utf8_lossy(&buf[..n]).trim()),
                Err(e) => errno(e),
            },
        };
        lines.push(line);
    }
    lines.join("\n")
}
