//! The real binary against the Consul stand-in: registration, deregistration on signals,
//! an unreachable agent, graceful draining.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{eventually, get, EchoProcess};
use standins::{closed_port_addr, ConsulOptions, ConsulStandin, Instance};

const REGISTER_TIMEOUT: Duration = Duration::from_secs(15);

fn consul() -> ConsulStandin {
    ConsulStandin::start(ConsulOptions::default()).expect("start Consul stand-in")
}

fn wait_for_instance(consul: &ConsulStandin, service: &str) -> Instance {
    eventually(REGISTER_TIMEOUT, || consul.instances(service).pop()).unwrap_or_else(|| {
        panic!(
            "{service} never registered; log: {:?}",
            consul.request_log()
        )
    })
}

#[test]
fn registers_with_meta_tags_and_health_check_then_deregisters_on_sigterm() {
    let consul = consul();
    let consul_url = consul.url();
    let mut echo = EchoProcess::start(&[
        ("CONSUL_HTTP_ADDR", consul_url.as_str()),
        ("SERVICE_NAME", "payments"),
        ("SERVICE_VERSION", "2.4.1"),
        ("SERVICE_REGION", "eu-west-1"),
        ("SERVICE_TAGS", "blue,canary"),
    ]);
    let port = echo.addr.port();

    let instance = wait_for_instance(&consul, "payments");
    assert_eq!(instance.id, format!("payments-{port}"));
    assert_eq!(instance.address, "127.0.0.1");
    assert_eq!(instance.port, port);
    assert_eq!(instance.tags, ["blue", "canary"]);
    assert_eq!(
        instance.meta,
        [("region", "eu-west-1"), ("version", "2.4.1")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into()
    );
    let check = instance.check.expect("an HTTP check");
    assert_eq!(check.http, format!("http://127.0.0.1:{port}/health"));
    assert_eq!(check.interval, Duration::from_secs(10));
    assert_eq!(
        check.deregister_critical_service_after,
        Some(Duration::from_secs(60))
    );
    // The registered check URL is one this process answers.
    let health = get(&check.http, &[]);
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));

    echo.stop_with("TERM");
    assert!(consul.instances("payments").is_empty());
    let deregistrations: Vec<_> = consul
        .request_log()
        .into_iter()
        .filter(|request| request.path.starts_with("/v1/agent/service/deregister/"))
        .collect();
    assert_eq!(deregistrations.len(), 1, "{deregistrations:?}");
    assert_eq!(deregistrations[0].method, "PUT");
    assert_eq!(
        deregistrations[0].path,
        format!("/v1/agent/service/deregister/payments-{port}")
    );
}

/// A Consul agent that answers every request 200 and hands over each request's body: the
/// stand-in keeps the registration's fields, not the raw JSON the service sent.
fn capturing_agent() -> (String, mpsc::Receiver<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let mut stream = reader.into_inner();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = sender.send((request_line, String::from_utf8_lossy(&body).into_owned()));
        }
    });
    (url, receiver)
}

#[test]
fn the_health_check_is_registered_passing() {
    let (agent_url, requests) = capturing_agent();
    let mut echo = EchoProcess::start(&[("CONSUL_HTTP_ADDR", agent_url.as_str())]);
    let (request_line, body) = requests
        .recv_timeout(REGISTER_TIMEOUT)
        .expect("a registration request");
    assert!(
        request_line.starts_with("PUT /v1/agent/service/register "),
        "{request_line}"
    );
    let registration: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    // Checks start critical otherwise, and Consul's DNS hides the instance until the
    // first check passes.
    assert_eq!(registration["Check"]["Status"], "passing", "{registration}");
    assert_eq!(
        registration["Check"]["HTTP"],
        format!("http://127.0.0.1:{}/health", echo.addr.port())
    );
    echo.stop_with("TERM");
}

#[test]
fn sigint_deregisters_too_and_the_acl_token_is_sent() {
    let consul = ConsulStandin::start(ConsulOptions {
        acl_token: Some("management-token".to_owned()),
        ..ConsulOptions::default()
    })
    .expect("start Consul stand-in");
    let consul_url = consul.url();
    let mut echo = EchoProcess::start(&[
        ("CONSUL_HTTP_ADDR", consul_url.as_str()),
        ("CONSUL_HTTP_TOKEN", "management-token"),
        ("SERVICE_ID", "echo-a"),
    ]);
    let instance = wait_for_instance(&consul, "echo");
    assert_eq!(instance.id, "echo-a");

    echo.stop_with("INT");
    assert!(consul.instances("echo").is_empty());
    let writes: Vec<_> = consul
        .request_log()
        .into_iter()
        .filter(|request| request.path.starts_with("/v1/agent/service/"))
        .collect();
    assert_eq!(writes.len(), 2, "{writes:?}");
    for write in writes {
        assert_eq!(write.header("x-consul-token"), Some("management-token"));
    }
}

#[test]
fn a_rejected_token_is_retried_logged_and_the_service_keeps_serving() {
    let consul = ConsulStandin::start(ConsulOptions {
        acl_token: Some("management-token".to_owned()),
        ..ConsulOptions::default()
    })
    .expect("start Consul stand-in");
    let consul_url = consul.url();
    let mut echo = EchoProcess::start(&[
        ("CONSUL_HTTP_ADDR", consul_url.as_str()),
        ("CONSUL_HTTP_TOKEN", "wrong-token"),
    ]);
    eventually(REGISTER_TIMEOUT, || {
        (consul.requests("/v1/agent/service/register") >= 2).then_some(())
    })
    .expect("registration retried");
    assert!(echo.stderr().contains("HTTP 403"), "{}", echo.stderr());
    assert_eq!(get(&echo.url("/echo"), &[]).status, 200);

    echo.stop_with("TERM");
    assert_eq!(consul.requests("/v1/agent/service/deregister/"), 0);
}

#[test]
fn consul_down_at_start_keeps_serving_and_registers_once_it_is_up() {
    let consul_addr: SocketAddr = closed_port_addr();
    let consul_url = format!("http://{consul_addr}");
    let mut echo = EchoProcess::start(&[("CONSUL_HTTP_ADDR", consul_url.as_str())]);

    let first_failure = eventually(REGISTER_TIMEOUT, || {
        echo.stderr().contains("attempt 1/").then_some(())
    });
    assert!(first_failure.is_some(), "stderr:\n{}", echo.stderr());
    let reply = get(&echo.url("/echo"), &[]);
    assert_eq!(reply.status, 200);
    assert_eq!(get(&echo.url("/health"), &[]).status, 200);

    let consul = ConsulStandin::start(ConsulOptions {
        listen: consul_addr,
        ..ConsulOptions::default()
    })
    .expect("start Consul stand-in on the announced address");
    let instance = wait_for_instance(&consul, "echo");
    assert_eq!(instance.port, echo.addr.port());

    echo.stop_with("TERM");
    assert!(consul.instances("echo").is_empty());
}

#[test]
fn consul_never_reachable_still_stops_cleanly() {
    let consul_url = format!("http://{}", closed_port_addr());
    let mut echo = EchoProcess::start(&[("CONSUL_HTTP_ADDR", consul_url.as_str())]);
    assert_eq!(get(&echo.url("/echo"), &[]).status, 200);
    echo.stop_with("TERM");
    assert!(
        echo.stderr().contains("SIGTERM received"),
        "{}",
        echo.stderr()
    );
}

#[test]
fn sigterm_deregisters_stops_accepting_and_finishes_the_request_in_flight() {
    let consul = consul();
    let consul_url = consul.url();
    let mut echo = EchoProcess::start(&[("CONSUL_HTTP_ADDR", consul_url.as_str())]);
    wait_for_instance(&consul, "echo");

    // A POST whose body is only half sent is in flight until the rest arrives.
    let mut in_flight = TcpStream::connect(echo.addr).expect("connect");
    in_flight
        .write_all(b"POST /echo HTTP/1.1\r\nHost: echo\r\nContent-Length: 10\r\n\r\nhello")
        .expect("send the first half");
    // Let the server read the head, so the request is really in flight.
    std::thread::sleep(Duration::from_millis(500));
    echo.signal("TERM");

    eventually(REGISTER_TIMEOUT, || {
        consul.instances("echo").is_empty().then_some(())
    })
    .expect("deregistered while the request is still in flight");
    eventually(REGISTER_TIMEOUT, || {
        TcpStream::connect(echo.addr).is_err().then_some(())
    })
    .expect("new connections refused after the signal");

    in_flight.write_all(b"world").expect("send the second half");
    let mut answer = String::new();
    in_flight
        .read_to_string(&mut answer)
        .expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"body_bytes\":10"), "{answer}");

    let status = echo.wait(common::EXIT_TIMEOUT);
    assert!(status.success(), "{status}; stderr:\n{}", echo.stderr());
}

#[test]
fn bad_configuration_exits_2_naming_the_variable() {
    for (variable, value) in [
        ("PORT", "eighty"),
        ("CONSUL_HTTP_ADDR", "https://consul:8501"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        // Refused by the OTLP exporter itself, which names the variable.
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://bad host:4318"),
    ] {
        let output = common::command(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            (variable, value),
        ])
        .output()
        .expect("run echo-service");
        assert_eq!(output.status.code(), Some(2), "{variable}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(variable), "{stderr}");
        assert!(output.stdout.is_empty(), "nothing announced for {variable}");
    }
}
