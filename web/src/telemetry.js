// OpenTelemetry for the page: W3C trace-context and baggage on fetches to the gateways,
// spans exported over OTLP/HTTP as soon as they end.

import { context, propagation, trace } from '@opentelemetry/api';
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { registerInstrumentations } from '@opentelemetry/instrumentation';
import { FetchInstrumentation } from '@opentelemetry/instrumentation-fetch';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { SimpleSpanProcessor, StackContextManager, TracerProvider } from '@opentelemetry/sdk-trace';
import { gatewayOriginPatterns } from './config.js';

export const SERVICE_NAME = 'checkout-web';

export function startTelemetry(config) {
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ 'service.name': SERVICE_NAME }),
    // One export per span: the demo wants the trace in Jaeger right after the click.
    spanProcessors: [new SimpleSpanProcessor({ exporter: new OTLPTraceExporter({ url: config.otlp }) })],
  });
  trace.setGlobalTracerProvider(provider);
  context.setGlobalContextManager(new StackContextManager().enable());
  propagation.setGlobalPropagator(
    new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }),
  );
  registerInstrumentations({
    tracerProvider: provider,
    instrumentations: [
      new FetchInstrumentation({
        propagateTraceHeaderCorsUrls: gatewayOriginPatterns(config.gateways),
        // The exporter's own requests are not part of the user's trace.
        ignoreUrls: [config.otlp],
      }),
    ],
  });
  return provider;
}
