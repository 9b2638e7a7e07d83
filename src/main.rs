//! The `snapshotd` binary: parse configuration, start logging, run the server.

use std::process::ExitCode;

use clap::Parser;
use snapshotd::config::{Command, Config};
use snapshotd::{App, app, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    telemetry::init(config.log_format);
    match config.command.clone().unwrap_or(Command::Serve) {
        Command::Serve => match serve(config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(error = %err, "snapshotd failed");
                eprintln!("snapshotd: {err}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn serve(config: Config) -> Result<(), app::AppError> {
    let app = App::build(config).await?;
    app.run_until(app::shutdown_signal()).await
}
