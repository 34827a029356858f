// Run-time settings of the page, read from the query string so one build serves any
// deployment: ?gateway=kong|envoy|<url>&kong=<url>&envoy=<url>&otlp=<url>&jaeger=<url>
// The defaults are the ports docker-compose.yml publishes on localhost.

export const DEFAULTS = Object.freeze({
  kong: 'http://localhost:8000',
  envoy: 'http://localhost:10000',
  otlp: 'http://localhost:4318/v1/traces',
  jaeger: 'http://localhost:16686',
});

function httpUrl(name, value) {
  let url;
  try {
    url = new URL(value);
  } catch {
    throw new Error(`query parameter "${name}" is not a URL: ${value}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new Error(`query parameter "${name}" must be an http(s) URL: ${value}`);
  }
  return url;
}

// A base URL without its trailing slash, so paths can be appended with "/".
function baseUrl(name, value) {
  return httpUrl(name, value).href.replace(/\/+$/, '');
}

export function readConfig(search) {
  const params = new URLSearchParams(search);
  const get = (name) => params.get(name) ?? DEFAULTS[name];
  const gateways = {
    kong: baseUrl('kong', get('kong')),
    envoy: baseUrl('envoy', get('envoy')),
  };
  const choice = params.get('gateway') ?? 'kong';
  let selected = choice;
  if (!(choice in gateways)) {
    gateways.custom = baseUrl('gateway', choice);
    selected = 'custom';
  }
  return {
    gateways,
    selected,
    otlp: httpUrl('otlp', get('otlp')).href,
    jaeger: baseUrl('jaeger', get('jaeger')),
  };
}

// Trace headers go only to the gateways: one anchored pattern per origin, so
// http://localhost:8000 does not also match http://localhost:80001.
export function gatewayOriginPatterns(gateways) {
  const escape = (text) => text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  const origins = new Set(Object.values(gateways).map((url) => new URL(url).origin));
  return [...origins].map((origin) => new RegExp(`^${escape(origin)}(/|$)`));
}
