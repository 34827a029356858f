//! The report binary against the OTLP stand-in's Jaeger api_v3: clicks exported as OTLP
//! spans, one version made slow on purpose and one of its instances slower still; the
//! report must name that version as the cause and that instance within it.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde_json::Value;
use standins::OtlpStandin;

/// 2023-11-14T22:00:00Z; clicks start after it, one every 10.3 s.
const WINDOW_START_NANOS: u64 = 1_699_999_200_000_000_000;
const WINDOW: [&str; 4] = [
    "--start",
    "2023-11-14T22:00:00Z",
    "--end",
    "2023-11-14T23:00:00Z",
];
const MS: u64 = 1_000_000;

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
    }
}

fn resource_spans(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![text("service.name", service)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

struct Instance {
    id: &'static str,
    version: &'static str,
    region: &'static str,
    /// Gateway (upstream) time of a click.
    gateway_ms: u64,
}

const ECHO_1: Instance = Instance {
    id: "echo-1",
    version: "1.4.2",
    region: "eu-west-1",
    gateway_ms: 60,
};
/// Version 2.0.0: its clicks five times slower (500 ms against 100 ms).
const ECHO_2: Instance = Instance {
    id: "echo-2",
    version: "2.0.0",
    region: "us-east-1",
    gateway_ms: 460,
};
/// Version 2.0.0 again, slower still.
const ECHO_3: Instance = Instance {
    id: "echo-3",
    version: "2.0.0",
    region: "us-east-1",
    gateway_ms: 760,
};

/// One click's trace as the browser, the gateway (the filter's own span) and echo export it.
fn click(n: u64, instance: &Instance) -> [ResourceSpans; 3] {
    let trace_id = (0x0af7_6519_16cd_43dd_8448_eb21_0000_0000_u128 + u128::from(n))
        .to_be_bytes()
        .to_vec();
    let span_id = |kind: u64| (kind << 32 | n).to_be_bytes().to_vec();
    let start = WINDOW_START_NANOS + 3_700 * MS + n * 10_300 * MS;
    // A little spread so percentiles are not all ties.
    let gateway_ns = (instance.gateway_ms + n % 7) * MS;
    let browser = Span {
        trace_id: trace_id.clone(),
        span_id: span_id(1),
        name: "checkout.submit".to_owned(),
        kind: 1,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 40 * MS + gateway_ns,
        attributes: vec![text(
            "ui.component",
            if (n / 20).is_multiple_of(2) {
                "checkout-form"
            } else {
                "cart-button"
            },
        )],
        ..Default::default()
    };
    let gateway = Span {
        trace_id: trace_id.clone(),
        span_id: span_id(2),
        parent_span_id: span_id(1),
        name: "consul-enricher echo".to_owned(),
        kind: 2,
        start_time_unix_nano: start + 10 * MS,
        end_time_unix_nano: start + 10 * MS + gateway_ns,
        attributes: vec![
            text("consul.service.id", instance.id),
            text("consul.service.meta.version", instance.version),
            text("consul.service.meta.region", instance.region),
            text("consul.datacenter", "dc1"),
            text("consul.lookup", if n == 0 { "miss" } else { "hit" }),
        ],
        ..Default::default()
    };
    let echo = Span {
        trace_id,
        span_id: span_id(3),
        parent_span_id: span_id(2),
        name: "POST /echo".to_owned(),
        kind: 2,
        start_time_unix_nano: start + 12 * MS,
        end_time_unix_nano: start + 8 * MS + gateway_ns,
        ..Default::default()
    };
    [
        resource_spans("checkout-web", vec![browser]),
        resource_spans("envoy-consul-enricher", vec![gateway]),
        resource_spans("echo", vec![echo]),
    ]
}

/// 180 clicks on 1.4.2 (echo-1), 10 on 2.0.0's echo-2 and 10 on its echo-3, interleaved,
/// exported 50 clicks at a time.
fn standin_with_clicks() -> OtlpStandin {
    let otlp = OtlpStandin::start().expect("start the OTLP stand-in");
    let instance = |n: u64| match n % 20 {
        3 => &ECHO_2,
        13 => &ECHO_3,
        _ => &ECHO_1,
    };
    let clicks: Vec<ResourceSpans> = (0..200).flat_map(|n| click(n, instance(n))).collect();
    for batch in clicks.chunks(150) {
        let body = ExportTraceServiceRequest {
            resource_spans: batch.to_vec(),
        }
        .encode_to_vec();
        let status = ureq::post(format!("{}/v1/traces", otlp.url()))
            .header("Content-Type", "application/x-protobuf")
            .send(&body[..])
            .expect("export")
            .status();
        assert_eq!(status, 200);
    }
    otlp
}

fn report(arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_consul-enricher-report"))
        .args(arguments)
        .output()
        .expect("run the report")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn names_the_slow_version_and_its_slowest_instance() {
    let otlp = standin_with_clicks();
    let url = otlp.url();
    let mut arguments = vec!["--jaeger", &url, "--page-size", "16", "--by", "instance"];
    arguments.extend(WINDOW);
    let output = report(&arguments);
    let printed = stdout(&output);
    assert!(output.status.success(), "{}{printed}", stderr(&output));
    println!("{printed}");
    eprintln!("{}", stderr(&output));

    assert!(
        printed.contains("200 clicks in 200 traces; 200 joined to a gateway span"),
        "{printed}"
    );
    // The table: component × version × instance, with the click and gateway latency.
    let row = printed
        .lines()
        .find(|line| line.contains("| checkout-form") && line.contains("| echo-3"))
        .expect("a row for echo-3's form clicks");
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(cells[1..5], ["checkout-form", "2.0.0", "echo-3", "5"]);
    let cause = printed
        .lines()
        .find(|line| line.starts_with("Cause: "))
        .expect("a cause");
    assert!(
        cause.starts_with("Cause: consul.service.meta.version = 2.0.0: 100.0% of the slow clicks (20), 10.0% of all clicks (20)"),
        "{cause}"
    );
    let within = printed
        .lines()
        .find(|line| line.contains("within it"))
        .expect("an instance within the version");
    assert!(within.contains("consul.service.id = echo-3"), "{within}");
    // The pages were split (16 traces a search) and it said so on stderr.
    assert!(
        stderr(&output).contains("full pages split"),
        "{}",
        stderr(&output)
    );
    assert!(printed.contains(&format!("{url}/trace/0af7651916cd43dd8448eb21000000")));
}

#[test]
fn json_for_scripts_and_an_svg_chart() {
    let otlp = standin_with_clicks();
    let url = otlp.url();
    let chart = std::env::temp_dir().join(format!("report-test-{}.svg", std::process::id()));
    let chart_path = chart.to_string_lossy().into_owned();
    let mut arguments = vec![
        "--jaeger",
        &url,
        "--ui",
        "http://jaeger.example:16686/",
        "--format",
        "json",
        "--chart",
        &chart_path,
    ];
    arguments.extend(WINDOW);
    let output = report(&arguments);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(report["clicks"], 200);
    assert_eq!(report["window"]["start"], "2023-11-14T22:00:00Z");
    let cause = &report["separation"]["cause"];
    assert_eq!(cause["attribute"], "consul.service.meta.version");
    assert_eq!(cause["value"], "2.0.0");
    assert_eq!(cause["within"]["value"], "echo-3");
    assert_eq!(cause["alike"]["consul.service.meta.region"], "us-east-1");
    let slowest = &report["slowest"][0];
    assert_eq!(slowest["attributes"]["consul.service.id"], "echo-3");
    let trace_id = slowest["trace_id"].as_str().expect("trace id");
    assert_eq!(
        slowest["url"],
        format!("http://jaeger.example:16686/trace/{trace_id}")
    );
    let versions: Vec<&str> = report["latency"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            row["group"]["consul.service.meta.version"]
                .as_str()
                .expect("version")
        })
        .collect();
    assert_eq!(versions, ["1.4.2", "2.0.0", "1.4.2", "2.0.0"]);

    let svg = std::fs::read_to_string(&chart).expect("chart written");
    let _ = std::fs::remove_file(&chart);
    assert!(
        svg.contains("<svg") && svg.contains("2.0.0 (20 clicks)"),
        "{svg}"
    );
}

#[test]
fn clear_errors() {
    let otlp = standin_with_clicks();
    let url = otlp.url();

    let closed = format!("http://{}", standins::closed_port_addr());
    let unreachable = report(&["--jaeger", &closed]);
    assert!(!unreachable.status.success());
    assert!(
        stderr(&unreachable).contains(&format!("cannot reach Jaeger at {closed}")),
        "{}",
        stderr(&unreachable)
    );

    let unknown = report(&["--jaeger", &url, "--service", "checkout-wbe"]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains(
            "knows no service \"checkout-wbe\"; it knows: checkout-web, echo, envoy-consul-enricher"
        ),
        "{}",
        stderr(&unknown)
    );

    let mut elsewhen = vec!["--jaeger", url.as_str()];
    elsewhen.extend([
        "--start",
        "2024-01-01T00:00:00Z",
        "--end",
        "2024-01-01T01:00:00Z",
    ]);
    let empty = report(&elsewhen);
    assert!(!empty.status.success());
    assert!(
        stderr(&empty).contains("no checkout.submit span of checkout-web started between"),
        "{}",
        stderr(&empty)
    );

    // The stand-in answers a plain 404 outside the API, as a server without api_v3 would.
    let no_v3 = report(&["--jaeger", &format!("{url}/old")]);
    assert!(
        stderr(&no_v3).contains("does not speak Jaeger's query API v3"),
        "{}",
        stderr(&no_v3)
    );

    let html = html_server();
    let not_json = report(&["--jaeger", &html]);
    assert!(
        stderr(&not_json).contains("is not Jaeger's api_v3 JSON")
            && stderr(&not_json).contains("<!doctype html>"),
        "{}",
        stderr(&not_json)
    );
}

/// A server that answers every request with a web page, as a UI behind a proxy would.
fn html_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let body = "<!doctype html><html><body>Jaeger UI</body></html>";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}
