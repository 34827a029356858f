//! Runs the OTLP/HTTP receiver and Jaeger query stand-in until SIGTERM or SIGINT.
//!
//! Usage: `otlp-standin [--port N]`
//!
//! Once listening it prints its base URL (`http://127.0.0.1:<port>`) as the first line of
//! stdout: exporters post to `<url>/v1/traces`, readers query `<url>/api/traces/<id>` or
//! Jaeger's api_v3, `<url>/api/v3/traces?query.service_name=...`.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use standins::OtlpStandin;

fn parse_args() -> Result<SocketAddr, String> {
    let mut listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--port" => {
                let port = args.next().ok_or("--port needs a value")?;
                let port: u16 = port.parse().map_err(|_| format!("bad --port {port:?}"))?;
                listen.set_port(port);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(listen)
}

fn main() -> ExitCode {
    let listen = match parse_args() {
        Ok(listen) => listen,
        Err(message) => {
            eprintln!("otlp-standin: {message}");
            return ExitCode::from(2);
        }
    };
    let mut otlp = match OtlpStandin::start_on(listen) {
        Ok(otlp) => otlp,
        Err(error) => {
            eprintln!("otlp-standin: cannot listen: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", otlp.url());
    let waited = standins::wait_for_termination();
    otlp.stop();
    match waited {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("otlp-standin: cannot wait for signals: {error}");
            ExitCode::FAILURE
        }
    }
}
