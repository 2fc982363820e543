//! A TCP client for the integration tests, run as a child process so it can be placed
//! in a test's network namespace and cgroup (a cgroup holds whole processes).
//!
//! `skiff-test-client ADDR COUNT [TIMEOUT_MS]` connects COUNT times to ADDR and
//! prints one line per attempt: what the server sent, or `error <errno>` when
//! connect() failed (`error timeout` when it took longer than TIMEOUT_MS).

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(addr), Some(count)) = (
        args.first().and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(1).and_then(|c| c.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: skiff-test-client ADDR COUNT [TIMEOUT_MS]");
        return ExitCode::from(2);
    };
    let timeout = match args.get(2).map(|t| t.parse::<u64>()) {
        None => None,
        Some(Ok(millis)) => Some(Duration::from_millis(millis)),
        Some(Err(e)) => {
            eprintln!("TIMEOUT_MS {:?}: {e}", args[2]);
            return ExitCode::from(2);
        }
    };
    for _ in 0..count {
        let connected = match timeout {
            Some(timeout) => TcpStream::connect_timeout(&addr, timeout),
            None => TcpStream::connect(addr),
        };
        match connected {
            Ok(mut stream) => {
                if let Err(e) = stream.set_read_timeout(timeout) {
                    eprintln!("setting the read timeout: {e}");
                    return ExitCode::FAILURE;
                }
                let mut reply = String::new();
                match stream.read_to_string(&mut reply) {
                    Ok(_) => println!("{}", reply.trim()),
                    Err(e) => println!("read-error {}", e.raw_os_error().unwrap_or(-1)),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => println!("error timeout"),
            Err(e) => println!("error {}", e.raw_os_error().unwrap_or(-1)),
        }
    }
    ExitCode::SUCCESS
}
