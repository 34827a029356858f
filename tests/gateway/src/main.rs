//! `gateway`: a loopback HTTP/1.1 reverse proxy that runs `consul_enricher.wasm` through the
//! wasmtime test host on every request, behaving like Kong (ngx_wasm_module) or Envoy, so
//! the whole demo path (browser, gateway with the filter, Consul, backends, collector) runs
//! without either gateway. Prints its base URL as the first line of stdout; stops on
//! SIGTERM or SIGINT and then prints the filter's metrics, each worker's wasm memory and the
//! shared data's size to stderr.
//!
//! Usage: see `options::USAGE` (`gateway --help`).

mod filter;
mod options;
mod proxy;
mod upstream;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::signal::unix::{signal, SignalKind};

use filter::FilterThread;
use options::{GatewayOptions, USAGE};
use proxy::Gateway;
use upstream::Balancer;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match GatewayOptions::parse(args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("gateway: {error:#}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: GatewayOptions) -> Result<()> {
    let filter = FilterThread::start(&options)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let gateway = Arc::new(Gateway {
        balancer: Balancer::new(options.consul.clone()),
        options,
        filter,
    });
    runtime.block_on(serve(Arc::clone(&gateway)))?;
    // In-flight connections hold the gateway; the filter thread stops (and reports) once
    // the runtime and they are gone.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    drop(gateway);
    Ok(())
}

async fn serve(gateway: Arc<Gateway>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(gateway.options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", gateway.options.listen))?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "http://{}", listener.local_addr()?)?;
    stdout.flush()?;
    drop(stdout);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    eprintln!("gateway: accept: {error}");
                    continue;
                }
            },
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
        };
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move {
            let service = service_fn(move |request| Arc::clone(&gateway).serve(request));
            let served = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            // A client closing its keep-alive connection mid-request (wrk does at the end
            // of a run) is routine, not an error worth a line.
            if let Err(error) = served {
                if !error.is_incomplete_message() {
                    eprintln!("gateway: connection: {error}");
                }
            }
        });
    }
}
