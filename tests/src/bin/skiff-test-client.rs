//! A TCP client for the integration tests, run as a child process so it can be placed
//! in a test's network namespace and cgroup (a cgroup holds whole processes).
//!
//! `skiff-test-client ADDR COUNT` connects COUNT times to ADDR and prints one line per
//! attempt: what the server sent, or `error <errno>` when connect() failed.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(addr), Some(count)) = (
        args.first().and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(1).and_then(|c| c.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: skiff-test-client ADDR COUNT");
        return ExitCode::from(2);
    };
    for _ in 0..count {
        match TcpStream::connect(addr) {
            Ok(mut stream) => {
                let mut reply = String::new();
                match stream.read_to_string(&mut reply) {
                    Ok(_) => println!("{}", reply.trim()),
                    Err(e) => println!("read-error {}", e.raw_os_error().unwrap_or(-1)),
                }
            }
            Err(e) => println!("error {}", e.raw_os_error().unwrap_or(-1)),
        }
    }
    ExitCode::SUCCESS
}
