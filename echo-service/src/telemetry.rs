//! OpenTelemetry set-up: W3C trace-context and baggage propagation, and an OTLP/HTTP batch
//! exporter when an OTLP endpoint is configured.
//!
//! The OpenTelemetry crates read their own environment: the resource detectors of
//! `Resource::builder()` take `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`, the OTLP
//! exporter `OTEL_EXPORTER_OTLP_[TRACES_]{ENDPOINT,PROTOCOL,HEADERS,TIMEOUT,COMPRESSION}`
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` plus `/v1/traces`, the traces endpoint as it is), the SDK
//! `OTEL_BSP_*` and `OTEL_TRACES_SAMPLER[_ARG]`. This module adds the instance's identity.
//!
//! The exporter uses a blocking HTTP client on the batch processor's own thread, so the
//! provider is built and shut down outside the async runtime.

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Key, KeyValue};
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// What the SDK names a service nobody named (`unknown_service:<executable>`, from the
/// resource SDK specification).
const UNNAMED_SERVICE_PREFIX: &str = "unknown_service";

/// The service's identity, shared by its Consul registration and its trace resource.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The Consul service name: the resource's `service.name` unless `OTEL_SERVICE_NAME` or
    /// `OTEL_RESOURCE_ATTRIBUTES` names the service.
    pub service_name: String,
    pub service_id: String,
    pub version: String,
    pub region: Option<String>,
}

pub struct Telemetry {
    provider: SdkTracerProvider,
    pub tracer: SdkTracer,
}

impl Telemetry {
    /// Without `export`, spans are still created (their ids are echoed back) but not exported.
    pub fn init(identity: &Identity, export: bool) -> Result<Self, String> {
        let mut resource = Resource::builder();
        let detected = Resource::builder().build();
        let named = detected
            .get(&Key::new("service.name"))
            .is_some_and(|name| !name.as_str().starts_with(UNNAMED_SERVICE_PREFIX));
        if !named {
            resource = resource.with_service_name(identity.service_name.clone());
        }
        // The instance's own values, as registered in Consul, win over the environment's.
        let mut attributes = vec![
            KeyValue::new("service.version", identity.version.clone()),
            KeyValue::new("service.instance.id", identity.service_id.clone()),
        ];
        if let Some(region) = &identity.region {
            attributes.push(KeyValue::new("cloud.region", region.clone()));
        }
        let resource = resource.with_attributes(attributes).build();

        let mut builder = SdkTracerProvider::builder().with_resource(resource);
        if export {
            let exporter = SpanExporter::builder()
                .with_http()
                .build()
                .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
            builder = builder.with_batch_exporter(exporter);
        }
        let provider = builder.build();
        let tracer = provider.tracer("echo-service");
        Ok(Self { provider, tracer })
    }

    /// Exports what is still queued; called once, after the server has drained.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("echo-service: flushing spans failed: {error}");
        }
    }
}

pub fn propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}
