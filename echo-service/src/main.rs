//! echo-service: the demo backend behind the gateway. It registers itself in Consul with
//! its version and region, answers `/echo` with the enrichment the gateway added, continues
//! the incoming W3C trace and exports its spans over OTLP/HTTP.
//!
//! Start-up: read the environment, bind, print `listening on <addr>` as the first line of
//! stdout, register in Consul in the background. SIGTERM or SIGINT: deregister, stop
//! accepting, finish in-flight requests, flush spans, exit 0.

mod config;
mod consul;
mod echo;
mod telemetry;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::Config;
use crate::consul::{ConsulAgent, Registration};
use crate::echo::{EchoState, Instance};
use crate::telemetry::{Identity, Telemetry};

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("echo-service: {error}");
            return ExitCode::from(2);
        }
    };
    let listener = match bind(&config) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "echo-service: cannot listen on {}:{}: {error}",
                config.listen_address, config.port
            );
            return ExitCode::FAILURE;
        }
    };
    let local_addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("echo-service: cannot read the bound address: {error}");
            return ExitCode::FAILURE;
        }
    };
    let instance = Instance {
        service: config.service_name.clone(),
        id: config
            .service_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", config.service_name, local_addr.port())),
        version: config.service_version.clone(),
        region: config.service_region.clone(),
    };
    let identity = Identity {
        service_name: config.service_name.clone(),
        service_id: instance.id.clone(),
        version: instance.version.clone(),
        region: instance.region.clone(),
    };
    let telemetry = match Telemetry::init(&identity, config.otlp_export) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("echo-service: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("echo-service: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let state = Arc::new(EchoState {
        instance,
        port: local_addr.port(),
        tracer: telemetry.tracer.clone(),
        propagator: telemetry::propagator(),
        response_delay: config.response_delay,
    });
    let served = runtime.block_on(serve(listener, local_addr, &config, state));
    drop(runtime);
    telemetry.shutdown();
    match served {
        Ok(()) => {
            eprintln!("echo-service: stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("echo-service: {error}");
            ExitCode::FAILURE
        }
    }
}

fn bind(config: &Config) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind((config.listen_address, config.port))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

async fn serve(
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    config: &Config,
    state: Arc<EchoState>,
) -> Result<(), String> {
    // Handlers are installed before the address is announced, so a signal sent as soon as
    // the line is read is already a graceful stop.
    let signals = ShutdownSignals::install().map_err(|e| format!("cannot handle signals: {e}"))?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| format!("cannot use the listener: {e}"))?;
    announce(local_addr).map_err(|e| format!("cannot write to stdout: {e}"))?;

    let consul = match &config.consul {
        Some(consul) => {
            Some(Arc::new(ConsulAgent::new(consul.clone()).map_err(|e| {
                format!("cannot build the Consul client: {e}")
            })?))
        }
        None => None,
    };
    let registration = consul.as_ref().map(|agent| {
        let mut meta = BTreeMap::from([("version".to_owned(), state.instance.version.clone())]);
        if let Some(region) = &state.instance.region {
            meta.insert("region".to_owned(), region.clone());
        }
        let registration = Registration::new(
            &state.instance.service,
            &state.instance.id,
            &config.service_address,
            local_addr.port(),
            &config.service_tags,
            meta,
        );
        tokio::spawn(Arc::clone(agent).register_with_retries(registration))
    });

    let service_id = state.instance.id.clone();
    let shutdown = async move {
        let signal_name = signals.received().await;
        eprintln!("echo-service: {signal_name} received, shutting down");
        if let Some(registration) = registration {
            registration.abort();
        }
        if let Some(agent) = consul {
            agent.deregister(&service_id).await;
        }
    };
    axum::serve(listener, echo::router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| format!("server failed: {e}"))
}

fn announce(local_addr: SocketAddr) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {local_addr}")?;
    stdout.flush()
}

struct ShutdownSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn received(mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
