//! The `snapshotd` binary: parse configuration, start logging, run the server.

use std::process::ExitCode;

use clap::Parser;
use std::sync::Arc;

use snapshotd::backend::SimulatedBackend;
use snapshotd::clock::SystemClock;
use snapshotd::config::{Command, Config, redact_password};
use snapshotd::service::Service;
use snapshotd::telemetry::error_chain;
use snapshotd::{App, app, demo, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    telemetry::init(config.log_format);
    match config.command.clone().unwrap_or(Command::Serve) {
        Command::Serve => exit_code(serve(config).await),
        Command::SeedDemo => exit_code(seed_demo(config).await),
        Command::Health => health(config).await,
        Command::Check => check(config).await,
    }
}

fn exit_code(result: Result<(), app::AppError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %error_chain(&err), "snapshotd failed");
            eprintln!("snapshotd: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

async fn health(config: Config) -> ExitCode {
    // A wildcard listen address is reached on loopback.
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let check = async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let response = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(response.into_inner().status())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), check).await {
        Ok(Ok(tonic_health::pb::health_check_response::ServingStatus::Serving)) => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            println!("{}", status.as_str_name());
            ExitCode::FAILURE
        }
        Ok(Err(err)) => {
            eprintln!("snapshotd health: {err}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("snapshotd health: no answer from {addr} within 5 s");
            ExitCode::FAILURE
        }
    }
}

async fn check(config: Config) -> ExitCode {
    let result = async {
        let store = app::open_store(&config).await?;
        let violations = store
            .read()
            .await?
            .check_invariants(config.snapshot_quota)
            .await?;
        store.close().await;
        Ok::<_, app::AppError>(violations)
    }
    .await;
    match result {
        Ok(violations) if violations.is_empty() => {
            println!("ok: every promise holds");
            ExitCode::SUCCESS
        }
        Ok(violations) => {
            for v in &violations {
                println!("BROKEN {}: {} ({})", v.promise, v.subject, v.detail);
            }
            println!("{} breach(es)", violations.len());
            ExitCode::FAILURE
        }
        Err(err) => exit_code(Err(err)),
    }
}

async fn seed_demo(config: Config) -> Result<(), app::AppError> {
    let store = app::open_store(&config).await?;
    let service = Service::new(
        Arc::clone(&store),
        Arc::new(SimulatedBackend::new(config.copy_rate_mibps)),
        Arc::new(SystemClock),
        config.policy(),
    );
    demo::seed_demo(&service, chrono::Utc::now()).await?;
    store.close().await;
    println!(
        "seeded the demo inventory ({}) into {}",
        demo::DEMO_ACCOUNT,
        redact_password(&config.database_url)
    );
    Ok(())
}

async fn serve(config: Config) -> Result<(), app::AppError> {
    let mut signals = app::ShutdownSignals::install().map_err(app::AppError::Signals)?;
    let app = App::build(config).await?;
    app.run_until(async move {
        signals.next().await;
        // A second signal means "now": in-flight calls are abandoned (their transactions roll
        // back in the database when the connections drop).
        tokio::spawn(async move {
            signals.next().await;
            eprintln!("snapshotd: second signal: exiting at once");
            std::process::exit(1);
        });
    })
    .await
}
