//! Runs the Consul stand-in until SIGTERM or SIGINT.
//!
//! Usage: `consul-standin [--port N] [--datacenter DC] [--other-datacenter DC]...
//! [--node NAME] [--token TOKEN]`
//!
//! Once listening it prints its base URL (`http://127.0.0.1:<port>`) as the first line of
//! stdout. Services register themselves with `PUT /v1/agent/service/register`.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use standins::{ConsulOptions, ConsulStandin};

fn parse_args() -> Result<ConsulOptions, String> {
    let mut options = ConsulOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => {
                let port = value()?;
                let port: u16 = port.parse().map_err(|_| format!("bad --port {port:?}"))?;
                options.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            }
            "--datacenter" => options.datacenter = value()?,
            "--other-datacenter" => options.other_datacenters.push(value()?),
            "--node" => options.node = value()?,
            "--token" => options.acl_token = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("consul-standin: {message}");
            return ExitCode::from(2);
        }
    };
    let mut consul = match ConsulStandin::start(options) {
        Ok(consul) => consul,
        Err(error) => {
            eprintln!("consul-standin: cannot listen: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", consul.url());
    let waited = standins::wait_for_termination();
    consul.stop();
    match waited {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("consul-standin: cannot wait for signals: {error}");
            ExitCode::FAILURE
        }
    }
}
