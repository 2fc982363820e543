//! The `skiff` binary: parses the command line and runs it; errors go to stderr
//! with exit status 1 (clap's help and version exit 0; `exec` exits with its
//! command's status).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match skiff::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    // hickory-server logs every answer at info (through tracing's log
    // records): cluster DNS has its own metrics instead.
    logger.filter_module("hickory_server", log::LevelFilter::Warn);
    if let Some(level) = cli.agent_ebpf_log() {
        // Kernel-side records carry the eBPF crate's name as their target.
        logger.filter_module("skiff_ebpf", level);
    }
    logger.init();
    match skiff::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
