//! The `skiff-cni` executable. Runtimes invoke it with no arguments (the CNI
//! protocol: environment and stdin in, result or error object on stdout, non-zero
//! exit on error); `skiff-cni install ...` installs it for them.

use std::io::{Read, Write};
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "install") {
        return install();
    }
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
    if !out.is_empty() {
        let _ = writeln!(std::io::stdout(), "{out}");
    }
    code
}

fn install() -> ExitCode {
    let options = skiff_cni::install::Options::parse_from(std::env::args_os().skip(1));
    let result = std::env::current_exe()
        .map_err(|e| format!("locating this executable: {e}"))
        .and_then(|me| skiff_cni::install::install(&options, &me).map_err(|e| e.to_string()));
    match result {
        Ok(installed) => {
            println!(
                "installed {} and {}",
                installed.binary.display(),
                installed.conflist.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
