//! `longshore`: see `longshore --help`.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    // Logs on stderr (warnings by default; RUST_LOG for more), results on stdout.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(longshore::log_filter(
            &std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )))
        .init();
    let cli = longshore_cli::Cli::parse();
    longshore_cli::run(cli, &mut std::io::stdout(), None).await
}
