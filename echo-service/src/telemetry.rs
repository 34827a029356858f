//! OpenTelemetry set-up: W3C trace-context and baggage propagation, and an OTLP/HTTP batch
//! exporter when an OTLP endpoint is configured.
//!
//! The exporter uses a blocking HTTP client on the batch processor's own thread, so the
//! provider is built and shut down outside the async runtime.

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::config::OtlpConfig;

/// The service's identity, shared by its Consul registration and its trace resource.
#[derive(Debug, Clone)]
pub struct Identity {
    pub otel_service_name: String,
    pub service_id: String,
    pub version: String,
    pub region: Option<String>,
}

pub struct Telemetry {
    provider: SdkTracerProvider,
    pub tracer: SdkTracer,
}

impl Telemetry {
    /// Without `otlp`, spans are still created (their ids are echoed back) but not exported.
    pub fn init(identity: &Identity, otlp: Option<&OtlpConfig>) -> Result<Self, String> {
        let mut attributes = vec![
            KeyValue::new("service.version", identity.version.clone()),
            KeyValue::new("service.instance.id", identity.service_id.clone()),
        ];
        if let Some(region) = &identity.region {
            attributes.push(KeyValue::new("cloud.region", region.clone()));
        }
        // `Resource::builder` keeps OTEL_RESOURCE_ATTRIBUTES and the SDK's own attributes.
        let resource = Resource::builder()
            .with_service_name(identity.otel_service_name.clone())
            .with_attributes(attributes)
            .build();

        let mut builder = SdkTracerProvider::builder().with_resource(resource);
        if let Some(otlp) = otlp {
            let exporter = SpanExporter::builder()
                .with_http()
                .with_protocol(otlp.protocol)
                .with_endpoint(otlp.traces_endpoint.clone())
                .build()
                .map_err(|e| {
                    format!(
                        "cannot build the OTLP exporter for {}: {e}",
                        otlp.traces_endpoint
                    )
                })?;
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
