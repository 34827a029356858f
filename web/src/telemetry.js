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

// How long a click waits for the rest of its trace (the fetch instrumentation ends its
// span about 300 ms after the response, once resource timings are in).
const TRACE_SETTLE_TIMEOUT_MS = 3000;

// Counts the open spans of each trace, so a click can export its trace once complete.
class OpenSpanTracker {
  #open = new Map();
  #waiters = new Map();

  onStart(span) {
    const traceId = span.spanContext().traceId;
    this.#open.set(traceId, (this.#open.get(traceId) ?? 0) + 1);
  }

  onEnd(span) {
    const traceId = span.spanContext().traceId;
    const open = (this.#open.get(traceId) ?? 1) - 1;
    if (open > 0) {
      this.#open.set(traceId, open);
      return;
    }
    this.#open.delete(traceId);
    for (const resolve of this.#waiters.get(traceId) ?? []) {
      resolve(true);
    }
    this.#waiters.delete(traceId);
  }

  // Resolves true once every span of the trace has ended, false on timeout.
  whenEnded(traceId, timeoutMs) {
    if (!this.#open.has(traceId)) {
      return Promise.resolve(true);
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      const waiters = this.#waiters.get(traceId) ?? [];
      waiters.push((ended) => {
        clearTimeout(timer);
        resolve(ended);
      });
      this.#waiters.set(traceId, waiters);
    });
  }

  forceFlush() {
    return Promise.resolve();
  }

  shutdown() {
    return Promise.resolve();
  }
}

// Returns the page's tracer and exportTrace(traceId): waits until the trace's spans have
// ended, exports them, and resolves to whether all had ended in time.
export function startTelemetry(config) {
  const tracker = new OpenSpanTracker();
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ 'service.name': SERVICE_NAME }),
    // One export per span: the demo wants the trace in Jaeger right after the click.
    spanProcessors: [tracker, new SimpleSpanProcessor({ exporter: new OTLPTraceExporter({ url: config.otlp }) })],
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
  return {
    tracer: provider.getTracer(SERVICE_NAME),
    async exportTrace(traceId) {
      const ended = await tracker.whenEnded(traceId, TRACE_SETTLE_TIMEOUT_MS);
      await provider.forceFlush();
      return ended;
    },
  };
}
