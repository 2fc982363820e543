//! The `skiff-cni` executable: reads the CNI environment and stdin, prints the result
//! or the spec's error object on stdout, and exits non-zero on error.

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let env = std::env::vars().collect();
    let mut stdin = Vec::new();
    let result = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => skiff_cni::run(&env, &stdin),
        Err(e) => Err(skiff_cni::CniError::new(
            skiff_cni::code::IO_FAILURE,
            "reading stdin failed",
            e.to_string(),
        )),
    };
    let (out, code) = match result {
        Ok(out) => (out, ExitCode::SUCCESS),
        Err(err) => (
            serde_json::to_string(&err).unwrap_or_else(|_| err.to_string()),
            ExitCode::FAILURE,
        ),
    };
    let _ = writeln!(std::io::stdout(), "{out}");
    code
}
