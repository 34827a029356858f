//! Micro-benchmarks of the filter's host-independent work per request: the W3C header
//! parsers, the Consul catalog parser (run once per lookup), the cache entry decode (once
//! per change of the stored value per worker) and the enrichment step (every request).

use std::hint::black_box;

use consul_enricher::cache::{Entry, Lookup};
use consul_enricher::config::Config;
use consul_enricher::consul::parse_catalog;
use consul_enricher::enrich;
use consul_enricher::trace_context::{Baggage, TraceParent, TraceState};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7,vendor@tenant=opaque-value";
const BAGGAGE: &str =
    "ui.component=checkout-button,user.tier=gold;ttl=60,session.id=7f3a9c,ui.action=click";

/// One catalog row as Consul 1.x returns it from `GET /v1/catalog/service/<name>`.
fn catalog_row(n: usize, version: &str, region: &str) -> String {
    format!(
        r#"{{"ID":"6f2c1a3e-{n:04}-4c1b-9d8e-1f2a3b4c5d6e","Node":"node-{n}","Address":"10.0.0.{n}","Datacenter":"dc1","TaggedAddresses":{{"lan":"10.0.0.{n}","lan_ipv4":"10.0.0.{n}","wan":"10.0.0.{n}","wan_ipv4":"10.0.0.{n}"}},"NodeMeta":{{"consul-network-segment":"","consul-version":"1.20.1"}},"ServiceKind":"","ServiceID":"echo-{n}","ServiceName":"echo","ServiceTags":["http","v{version}"],"ServiceAddress":"10.0.1.{n}","ServiceTaggedAddresses":{{"lan_ipv4":{{"Address":"10.0.1.{n}","Port":8080}}}},"ServiceWeights":{{"Passing":1,"Warning":1}},"ServiceMeta":{{"version":"{version}","region":"{region}","build":"a1b2c3d"}},"ServicePort":8080,"ServiceSocketPath":"","ServiceEnableTagOverride":false,"ServiceProxy":{{"Mode":"","MeshGateway":{{}},"Expose":{{}}}},"ServiceConnect":{{}},"ServiceLocality":null,"CreateIndex":{idx},"ModifyIndex":{idx}}}"#,
        idx = 100 + n,
    )
}

fn catalog_body() -> String {
    let rows = [
        catalog_row(1, "1.4.2", "eu-west-1"),
        catalog_row(2, "1.4.2", "eu-west-1"),
        catalog_row(3, "1.5.0", "eu-central-1"),
    ];
    format!("[{}]", rows.join(","))
}

fn parsers(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    group.bench_function("traceparent", |b| {
        b.iter(|| TraceParent::parse(black_box(TRACEPARENT)))
    });
    group.bench_function("tracestate", |b| {
        b.iter(|| TraceState::parse(black_box(TRACESTATE)))
    });
    group.bench_function("baggage", |b| b.iter(|| Baggage::parse(black_box(BAGGAGE))));

    let config = Config::default();
    let body = catalog_body();
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("consul_catalog_3_instances", |b| {
        b.iter(|| {
            parse_catalog(
                Some("200"),
                false,
                Some("4242"),
                black_box(body.as_bytes()),
                body.len(),
                &config.consul,
            )
        })
    });
    group.finish();
}

fn enrichment(c: &mut Criterion) {
    let config = Config::default();
    let body = catalog_body();
    let catalog = parse_catalog(
        Some("200"),
        false,
        None,
        body.as_bytes(),
        body.len(),
        &config.consul,
    )
    .expect("the sample catalog parses");
    let entry = Entry::from_answer(catalog.instances, 4242, 1_700_000_000_000, &config.cache);
    let encoded = entry.encode();

    let mut group = c.benchmark_group("enrich");
    group.bench_function("cache_entry_decode_3_instances", |b| {
        b.iter(|| Entry::decode(black_box(&encoded)))
    });
    group.bench_function("for_service_3_instances", |b| {
        b.iter(|| enrich::for_service(&config, black_box("echo"), &entry.instances, Lookup::Hit))
    });
    group.bench_function("baggage_append_members", |b| {
        let e = enrich::for_service(&config, "echo", &entry.instances, Lookup::Hit);
        b.iter(|| {
            let mut baggage = Baggage::parse(black_box(BAGGAGE)).expect("sample baggage parses");
            for (k, v) in &e.baggage {
                let _ = baggage.append(k, v);
            }
            baggage.as_header().len()
        })
    });
    group.finish();
}

criterion_group!(benches, parsers, enrichment);
criterion_main!(benches);
