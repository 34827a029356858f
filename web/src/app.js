// The checkout page: a submit starts the span `checkout.submit`, puts the UI component in
// W3C baggage and POSTs the order to <gateway>/echo through the instrumented fetch.
//
// For automated checks the page publishes its progress: <body data-state> is
// "loading" | "ready" | "pending" | "done" | "error", and window.lastResult holds
// { traceId, status, body, gateway, error, traceComplete } of the last submit once its
// spans are exported (traceComplete: every span had ended before the export).

import { context, propagation, SpanStatusCode, trace } from '@opentelemetry/api';
import { readConfig } from './config.js';
import { startTelemetry } from './telemetry.js';

const UI_COMPONENT = 'checkout-form';

const $ = (id) => document.getElementById(id);

function setState(state, message) {
  document.body.dataset.state = state;
  $('status').textContent = message;
}

function showTrace(config, traceId) {
  const link = $('trace-link');
  $('trace-id').textContent = traceId;
  link.href = `${config.jaeger}/trace/${traceId}`;
  link.textContent = link.href;
}

async function postOrder(url, order) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(order),
  });
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: response.status, body };
}

async function submit(config, telemetry, form) {
  const data = new FormData(form);
  const gateway = config.gateways[data.get('gateway')];
  const customer = String(data.get('customer'));
  const order = { item: data.get('item'), quantity: Number(data.get('quantity')), customer };

  const span = telemetry.tracer.startSpan('checkout.submit', {
    attributes: { 'ui.component': UI_COMPONENT, 'enduser.id': customer, 'url.full': `${gateway}/echo` },
  });
  const traceId = span.spanContext().traceId;
  showTrace(config, traceId);
  setState('pending', `Sending to ${gateway}/echo …`);
  $('response').textContent = '';

  const baggage = propagation.createBaggage({ 'ui.component': { value: UI_COMPONENT } });
  const spanContext = propagation.setBaggage(trace.setSpan(context.active(), span), baggage);

  let result;
  try {
    // The fetch instrumentation reads the active context synchronously when fetch is
    // called, which is all the stack context manager can offer across an await.
    const { status, body } = await context.with(spanContext, () => postOrder(`${gateway}/echo`, order));
    span.setAttribute('http.response.status_code', status);
    if (status >= 400) {
      span.setStatus({ code: SpanStatusCode.ERROR, message: `HTTP ${status}` });
    }
    result = { traceId, gateway, status, body };
  } catch (error) {
    span.recordException(error);
    span.setStatus({ code: SpanStatusCode.ERROR, message: String(error.message ?? error) });
    result = { traceId, gateway, status: 0, error: String(error.message ?? error) };
  } finally {
    span.end();
  }
  result.traceComplete = await telemetry.exportTrace(traceId);

  window.lastResult = result;
  $('response').textContent = JSON.stringify(result.body ?? result.error, null, 2);
  if (result.status >= 200 && result.status < 400) {
    setState('done', `HTTP ${result.status} from ${gateway}`);
  } else {
    setState('error', result.error ? `Request failed: ${result.error}` : `HTTP ${result.status} from ${gateway}`);
  }
}

function start() {
  let config;
  try {
    config = readConfig(window.location.search);
  } catch (error) {
    setState('error', error.message);
    return;
  }
  const telemetry = startTelemetry(config);

  for (const [name, url] of Object.entries(config.gateways)) {
    document.querySelector(`[data-gateway-url="${name}"]`).textContent = url;
  }
  $('custom-gateway').hidden = !('custom' in config.gateways);
  document.querySelector(`input[name="gateway"][value="${config.selected}"]`).checked = true;

  const form = $('checkout');
  const button = $('submit');
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    button.disabled = true;
    submit(config, telemetry, form).finally(() => {
      button.disabled = false;
    });
  });
  button.disabled = false;
  window.demoConfig = config;
  setState('ready', 'Ready.');
}

start();
