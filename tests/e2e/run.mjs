// End-to-end run of consul-enricher on one machine, without Docker: the Consul stand-in,
// two echo-service instances that register themselves with different version/region, the
// OTLP receiver stand-in (with Jaeger's query API), a gateway with consul_enricher.wasm,
// the built demo page on its own origin, and headless Chromium clicking Submit. The gateway:
//   envoy  the official Envoy binary (envoy-gateway: envoy/envoy.yaml on loopback); Envoy's
//          own span, exported by its OpenTelemetry tracer, is checked too
//   kong   the wasmtime test host's Kong flavour (gateway), as ngx_wasm_module behaves
//
//   node run.mjs [--flavour kong|envoy]... [--clicks N]   checks every click's trace and
//                                                          what the report makes of them
//   node run.mjs --demo [--flavour kong|envoy]...          6 clicks each, prints the first's
//                                                          span tree, then the report
//
// Binaries come from $BIN_DIR (default: $CARGO_TARGET_DIR/host or <repo>/target/host, as
// `cargo build --profile host` leaves them), the filter from $CONSUL_ENRICHER_WASM (default
// <repo>/dist/consul_enricher.wasm), the page from <repo>/web/dist, the browser from
// $CHROMIUM (default /usr/bin/chromium). Everything started is stopped at the end, also on
// failure. The last line is "N passed, N failed".

import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, extname, join, normalize, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const BIN_DIR = process.env.BIN_DIR ?? join(process.env.CARGO_TARGET_DIR ?? join(REPO, 'target'), 'host');
const WASM = process.env.CONSUL_ENRICHER_WASM ?? join(REPO, 'dist/consul_enricher.wasm');
const WEB_DIST = join(REPO, 'web/dist');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const CHROMIUM_FLAGS = [
  '--no-sandbox', '--headless', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
];
// echo-2 answers late on purpose: the report at the end must name its version as the
// cause of the slow clicks.
const INSTANCES = [
  { id: 'echo-1', version: '1.4.2', region: 'eu-west-1', delayMs: 0 },
  { id: 'echo-2', version: '2.0.0-rc.1', region: 'us-east-1', delayMs: 250 },
];
const SLOW_INSTANCE = INSTANCES[1];
const DEMO_CLICKS = 6;
const UI_COMPONENT = 'checkout-form';
// Per gateway: its binary, the service name of the filter's own span, and that of the
// gateway's own span (Envoy's tracer; the test host has none).
const GATEWAYS = {
  kong: { binary: 'gateway', filterService: 'api-gateway', proxyService: null },
  envoy: { binary: 'envoy-gateway', filterService: 'envoy-consul-enricher', proxyService: 'envoy-gateway' },
};
const BROWSER_SERVICE = 'checkout-web';
const ECHO_SERVICE = 'echo';
const STARTUP_TIMEOUT_MS = 30_000;
const TRACE_TIMEOUT_MS = 15_000;

function parseArgs(argv) {
  const args = { flavours: [], clicks: 20, demo: false };
  for (let i = 0; i < argv.length; i += 1) {
    const flag = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
      i += 1;
      return argv[i];
    };
    if (flag === '--flavour') {
      const flavour = value();
      if (!['kong', 'envoy'].includes(flavour)) throw new Error(`--flavour: ${flavour} is neither kong nor envoy`);
      args.flavours.push(flavour);
    } else if (flag === '--clicks') {
      args.clicks = Number.parseInt(value(), 10);
      if (!(args.clicks > 0)) throw new Error('--clicks wants a positive number');
    } else if (flag === '--demo') {
      args.demo = true;
    } else {
      throw new Error(`unknown argument ${flag}`);
    }
  }
  if (args.flavours.length === 0) args.flavours.push('envoy', 'kong');
  if (args.demo) args.clicks = DEMO_CLICKS;
  return args;
}

// ---------------------------------------------------------------- processes

const started = [];

// Starts a binary and resolves with the first stdout line matching `ready`; its stderr is
// kept and shown when the run fails.
function startProcess(name, file, args, env, ready) {
  const child = spawn(file, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const entry = { name, child, stderr: [] };
  started.push(entry);
  createInterface({ input: child.stderr }).on('line', (line) => {
    entry.stderr.push(line);
    if (entry.stderr.length > 400) entry.stderr.shift();
  });
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not start within ${STARTUP_TIMEOUT_MS} ms`)), STARTUP_TIMEOUT_MS);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`${name}: cannot run ${file}: ${error.message}`));
    });
    child.on('exit', (code, signal) => {
      entry.exited = { code, signal };
      clearTimeout(timer);
      reject(new Error(`${name} exited (${signal ?? code}) before it was ready:\n${entry.stderr.join('\n')}`));
    });
    createInterface({ input: child.stdout }).on('line', (line) => {
      const match = line.match(ready);
      if (match && !entry.ready) {
        entry.ready = true;
        clearTimeout(timer);
        resolvePromise(match[1]);
      }
    });
  });
}

async function stopProcess(entry) {
  if (entry.exited) return;
  const exited = new Promise((done) => entry.child.once('exit', done));
  entry.child.kill('SIGTERM');
  const timer = setTimeout(() => entry.child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

async function stopAll() {
  while (started.length > 0) {
    await stopProcess(started.pop());
  }
}

// ---------------------------------------------------------------- small helpers

const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
const hostPort = (url) => new URL(url).host;

async function getJson(url) {
  const response = await fetch(url);
  return { status: response.status, body: await response.json().catch(() => null) };
}

async function waitFor(what, timeoutMs, probe) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await probe();
    if (last.ok) return last.value;
    await sleep(100);
  }
  throw new Error(`${what} within ${timeoutMs} ms${last?.why ? `: ${last.why}` : ''}`);
}

const CONTENT_TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css', '.map': 'application/json',
};

// The built page on its own origin.
function serveStatic(root) {
  const server = createServer((request, response) => {
    const path = normalize(decodeURIComponent(new URL(request.url, 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '');
    const file = join(root, path === '/' ? 'index.html' : path);
    try {
      if (!file.startsWith(root) || !statSync(file).isFile()) throw new Error('not a file');
      response.writeHead(200, { 'content-type': CONTENT_TYPES[extname(file)] ?? 'application/octet-stream' });
      response.end(readFileSync(file));
    } catch {
      response.writeHead(404).end('not found');
    }
  });
  return new Promise((done) => server.listen(0, '127.0.0.1', () => done(server)));
}

// ---------------------------------------------------------------- the stack

async function startStack() {
  const bin = (name) => join(BIN_DIR, name);
  const consul = await startProcess('consul-standin', bin('consul-standin'), [], {}, /^(http:\/\/\S+)/);
  const otlp = await startProcess('otlp-standin', bin('otlp-standin'), [], {}, /^(http:\/\/\S+)/);
  const echoes = [];
  for (const instance of INSTANCES) {
    const address = await startProcess(instance.id, bin('echo-service'), [], {
      PORT: '0',
      SERVICE_NAME: ECHO_SERVICE,
      SERVICE_ID: instance.id,
      SERVICE_VERSION: instance.version,
      SERVICE_REGION: instance.region,
      CONSUL_HTTP_ADDR: consul,
      OTEL_EXPORTER_OTLP_ENDPOINT: otlp,
      RESPONSE_DELAY_MS: String(instance.delayMs),
    }, /^listening on (\S+)/);
    echoes.push({ ...instance, address });
  }
  await waitFor('both echo instances registered in Consul', STARTUP_TIMEOUT_MS, async () => {
    const { body } = await getJson(`${consul}/v1/catalog/service/${ECHO_SERVICE}`);
    const ids = Array.isArray(body) ? body.map((entry) => entry.ServiceID) : [];
    return { ok: INSTANCES.every((i) => ids.includes(i.id)), why: `registered: ${ids.join(', ') || 'none'}` };
  });
  const web = await serveStatic(WEB_DIST);
  const webOrigin = `http://127.0.0.1:${web.address().port}`;
  return { consul, otlp, echoes, web, webOrigin };
}

function gatewayArgs(flavour, stack) {
  const spans = { enabled: true, flush_ms: SPAN_FLUSH_MS, batch_size: 16 };
  if (flavour === 'envoy') {
    // envoy.yaml's filter configuration, with a quicker span flush.
    return [
      '--wasm', WASM, '--workers', '2', '--consul', hostPort(stack.consul), '--otlp', hostPort(stack.otlp),
      ...stack.echoes.flatMap((e) => ['--echo', e.address]), '--allow-origin', stack.webOrigin,
      '--config-json', JSON.stringify({ spans: { flush_ms: spans.flush_ms, batch_size: spans.batch_size } }),
    ];
  }
  const config = {
    host: 'kong',
    consul: { upstream: hostPort(stack.consul), authority: 'consul', timeout_ms: 500 },
    spans: { ...spans, upstream: hostPort(stack.otlp), authority: hostPort(stack.otlp) },
  };
  return [
    '--wasm', WASM, '--flavour', flavour, '--workers', '2', '--consul', stack.consul,
    '--route', `/echo=${ECHO_SERVICE}`, '--allow-origin', stack.webOrigin,
    '--config-json', JSON.stringify(config),
  ];
}

// ---------------------------------------------------------------- the browser

async function clickThrough(stack, gateway, clicks) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'consul-enricher-e2e-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS,
  });
  try {
    const page = context.pages()[0] ?? await context.newPage();
    const consoleLines = [];
    page.on('console', (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
    const query = new URLSearchParams({ gateway, otlp: `${stack.otlp}/v1/traces`, jaeger: stack.otlp });
    await page.goto(`${stack.webOrigin}/index.html?${query}`);
    await page.waitForSelector('body[data-state="ready"]', { timeout: STARTUP_TIMEOUT_MS }).catch((error) => {
      throw new Error(`the page did not get ready: ${error.message}\n${consoleLines.join('\n')}`);
    });
    const results = [];
    for (let i = 0; i < clicks; i += 1) {
      const previous = results.at(-1)?.traceId ?? null;
      await page.click('#submit');
      const handle = await page.waitForFunction(
        (before) => window.lastResult && window.lastResult.traceId !== before && window.lastResult,
        previous,
        { timeout: TRACE_TIMEOUT_MS },
      );
      results.push(await handle.jsonValue());
    }
    return results;
  } finally {
    await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- traces

const tag = (tags, key) => tags?.find((t) => t.key === key)?.value;

function traceModel(trace) {
  return trace.spans.map((span) => {
    const process = trace.processes[span.processID] ?? {};
    const parents = (span.references ?? []).filter((r) => r.refType === 'CHILD_OF');
    return {
      id: span.spanID,
      traceId: span.traceID,
      name: span.operationName,
      service: process.serviceName,
      resource: process.tags ?? [],
      tags: span.tags ?? [],
      parent: parents[0]?.spanID ?? null,
      parentTrace: parents[0]?.traceID ?? null,
      start: span.startTime,
      duration: span.duration,
    };
  });
}

async function fetchTrace(otlp, traceId, gateway) {
  const needed = [gateway.filterService, gateway.proxyService, ECHO_SERVICE].filter(Boolean);
  return waitFor(`trace ${traceId} complete in the receiver`, TRACE_TIMEOUT_MS, async () => {
    const { status, body } = await getJson(`${otlp}/api/traces/${traceId}`);
    if (status !== 200 || !body?.data?.[0]) return { ok: false, why: `HTTP ${status}` };
    const spans = traceModel(body.data[0]);
    const services = new Set(spans.map((s) => s.service));
    const count = (service) => spans.filter((s) => s.service === service).length;
    // The click and its fetch; echo-service's server span and its child, which can end in
    // different export batches (the server span only after RESPONSE_DELAY_MS).
    const ok = count(BROWSER_SERVICE) >= 2 && count(ECHO_SERVICE) >= 2
      && needed.every((name) => services.has(name));
    return { ok, value: spans, why: `services so far: ${[...services].join(', ')}` };
  });
}

// Every check of one click; returns the failures (empty when all hold).
function checkClick(result, spans, echoes, gateway) {
  const failures = [];
  const expect = (condition, message) => {
    if (!condition) failures.push(message);
  };
  expect(result.status === 200, `the page got HTTP ${result.status} ${result.error ?? ''}`);
  const ids = new Set(spans.map((s) => s.id));
  expect(spans.every((s) => s.traceId === result.traceId), 'a span of another trace came back');
  const roots = spans.filter((s) => s.parent === null);
  expect(roots.length === 1 && roots[0].name === 'checkout.submit',
    `expected one root, checkout.submit; roots: ${roots.map((s) => `${s.service}/${s.name}`).join(', ')}`);
  for (const span of spans.filter((s) => s.parent !== null)) {
    expect(ids.has(span.parent) && span.parentTrace === result.traceId,
      `orphan: ${span.service}/${span.name} points to missing parent ${span.parent}`);
  }
  const byId = new Map(spans.map((s) => [s.id, s]));
  const click = roots[0];
  const fetchSpan = spans.find((s) => s.service === BROWSER_SERVICE && s !== click);
  expect(fetchSpan && fetchSpan.parent === click?.id, 'the fetch span is not a child of the click span');
  const filterSpans = spans.filter((s) => s.service === gateway.filterService);
  expect(filterSpans.length === 1, `expected one filter span, got ${filterSpans.length}`);
  const filterSpan = filterSpans[0];
  if (filterSpan) {
    expect(filterSpan.parent === fetchSpan?.id, 'the filter span is not a child of the fetch span');
  }
  // Envoy's span is the fetch's child and the upstream's parent (its router sends its own
  // traceparent); without one, the filter's span is the upstream's parent.
  let proxySpan = null;
  if (gateway.proxyService) {
    const proxySpans = spans.filter((s) => s.service === gateway.proxyService);
    expect(proxySpans.length === 1, `expected one ${gateway.proxyService} span, got ${proxySpans.length}`);
    proxySpan = proxySpans[0];
    if (proxySpan) expect(proxySpan.parent === fetchSpan?.id, `the ${gateway.proxyService} span is not a child of the fetch span`);
  }
  const upstreamParent = gateway.proxyService ? proxySpan : filterSpan;
  const echoServer = spans.find((s) => s.service === ECHO_SERVICE && byId.get(s.parent)?.service !== ECHO_SERVICE);
  expect(echoServer, 'no echo-service server span');
  if (!filterSpan || !echoServer || !upstreamParent) return failures;
  expect(echoServer.parent === upstreamParent.id, `echo-service's span is not a child of the ${upstreamParent.service} span`);

  const answered = result.body?.instance;
  const echo = echoes.find((e) => e.id === answered?.id);
  expect(echo, `the answer names no known instance: ${JSON.stringify(answered)}`);
  expect(result.body?.trace_id === result.traceId, 'echo-service saw another trace id than the browser\'s');
  const attribute = (key) => tag(filterSpan.tags, key);
  expect(attribute('service.peer.name') === ECHO_SERVICE, `service.peer.name = ${attribute('service.peer.name')}`);
  if (echo) {
    const [host, port] = echo.address.split(':');
    expect(attribute('server.address') === host, `server.address = ${attribute('server.address')}, instance at ${host}`);
    expect(String(attribute('server.port')) === port, `server.port = ${attribute('server.port')}, instance at ${port}`);
    expect(attribute('consul.service.id') === echo.id, `consul.service.id = ${attribute('consul.service.id')}, answered by ${echo.id}`);
  }
  const version = tag(echoServer.resource, 'service.version');
  const region = tag(echoServer.resource, 'cloud.region');
  expect(version === answered?.version && region === answered?.region,
    `echo-service resource says ${version}/${region}, its answer ${answered?.version}/${answered?.region}`);
  expect(attribute('consul.service.meta.version') === version,
    `consul.service.meta.version = ${attribute('consul.service.meta.version')}, echo-service's service.version = ${version}`);
  expect(attribute('consul.service.meta.region') === region,
    `consul.service.meta.region = ${attribute('consul.service.meta.region')}, echo-service's cloud.region = ${region}`);
  expect(attribute('ui.component') === UI_COMPONENT, `ui.component = ${attribute('ui.component')}`);
  expect(tag(echoServer.tags, 'enrichment.header.x-consul-service') === ECHO_SERVICE,
    `echo-service saw x-consul-service = ${tag(echoServer.tags, 'enrichment.header.x-consul-service')}`);
  expect(tag(echoServer.tags, 'enrichment.baggage.consul.service') === ECHO_SERVICE,
    `echo-service saw baggage consul.service = ${tag(echoServer.tags, 'enrichment.baggage.consul.service')}`);
  expect(tag(echoServer.tags, 'enrichment.baggage.ui.component') === UI_COMPONENT,
    `echo-service saw baggage ui.component = ${tag(echoServer.tags, 'enrichment.baggage.ui.component')}`);
  if (proxySpan) {
    // envoy.yaml's custom tags: the instance that served, from the filter's filter state.
    const proxyTag = (key) => tag(proxySpan.tags, key);
    const [, port] = echo?.address.split(':') ?? [];
    for (const [key, want] of [
      ['consul.service.id', answered?.id], ['consul.service.meta.version', version],
      ['consul.service.meta.region', region], ['server.port', port], ['service.peer.name', ECHO_SERVICE],
    ]) {
      expect(proxyTag(key) === want, `${gateway.proxyService} span: ${key} = ${proxyTag(key)}, want ${want}`);
    }
  }
  return failures;
}

function printTree(spans) {
  const children = new Map();
  for (const span of spans) {
    const key = span.parent ?? 'root';
    children.set(key, [...(children.get(key) ?? []), span]);
  }
  const print = (span, depth) => {
    const indent = '  '.repeat(depth);
    console.log(`${indent}${span.service} · ${span.name}  (${(span.duration / 1000).toFixed(1)} ms, span ${span.id})`);
    const resource = span.resource.filter((t) => !t.key.startsWith('telemetry.')).map((t) => `${t.key}=${t.value}`);
    if (resource.length > 0) console.log(`${indent}    [resource] ${resource.join(', ')}`);
    for (const t of [...span.tags].sort((a, b) => a.key.localeCompare(b.key))) {
      console.log(`${indent}    ${t.key} = ${t.value}`);
    }
    for (const child of (children.get(span.id) ?? []).sort((a, b) => a.start - b.start)) print(child, depth + 1);
  };
  for (const root of children.get('root') ?? []) print(root, 0);
}

// On Kong the filter's spans leave with a later request: ngx_wasm_module leaks a connection
// for every call made outside a request, so nothing is sent from the tick (docs/waiting.md).
// A few requests after the last click, one per flush period on each worker, carry what is
// queued, as a gateway's ongoing traffic does.
const SPAN_FLUSH_MS = 200;

async function carryQueuedSpans(gateway) {
  for (let i = 0; i < 4; i += 1) {
    await sleep(SPAN_FLUSH_MS + 50);
    await fetch(`${gateway}/echo`).then((r) => r.arrayBuffer()).catch(() => null);
  }
}

// ---------------------------------------------------------------- main

async function runFlavour(flavour, stack, args, tally) {
  const gateway = GATEWAYS[flavour];
  console.log(`== ${flavour}: ${gateway.binary} with consul_enricher.wasm`);
  const url = await startProcess(`gateway (${flavour})`, join(BIN_DIR, gateway.binary), gatewayArgs(flavour, stack), {}, /^(http:\/\/\S+)/);
  const results = await clickThrough(stack, url, args.clicks);
  if (flavour === 'kong') await carryQueuedSpans(url);
  const hits = new Map();
  for (const [index, result] of results.entries()) {
    let failures;
    let spans = [];
    try {
      spans = await fetchTrace(stack.otlp, result.traceId, gateway);
      failures = checkClick(result, spans, stack.echoes, gateway);
    } catch (error) {
      failures = [error.message];
    }
    const instance = result.body?.instance?.id ?? '?';
    hits.set(instance, (hits.get(instance) ?? 0) + 1);
    if (args.demo && index === 0) {
      console.log(`\nTrace ${result.traceId} (${spans.length} spans), answered by ${instance}:\n`);
      printTree(spans);
      console.log('');
    }
    if (failures.length === 0) {
      tally.passed += 1;
      if (!args.demo) console.log(`ok   ${flavour} click ${index + 1}: trace ${result.traceId}, ${spans.length} spans, ${instance}`);
    } else {
      tally.failed += 1;
      console.log(`FAIL ${flavour} click ${index + 1}: trace ${result.traceId}\n  - ${failures.join('\n  - ')}`);
    }
  }
  if (!args.demo) {
    const all = INSTANCES.every((i) => hits.get(i.id) > 0);
    const summary = [...hits].map(([id, n]) => `${id} ×${n}`).join(', ');
    if (all) tally.passed += 1;
    else tally.failed += 1;
    console.log(`${all ? 'ok  ' : 'FAIL'} ${flavour}: both instances answered (${summary})`);
  }
  const entry = started.find((e) => e.name === `gateway (${flavour})`);
  await stopProcess(entry);
  started.splice(started.indexOf(entry), 1);
  // The test host's log levels are capitalised, Envoy's are not.
  const filterLines = entry.stderr.filter((line) => /trap|Error|Critical|\[(error|critical)\]/.test(line));
  if (filterLines.length > 0) {
    tally.failed += 1;
    console.log(`FAIL ${flavour}: the gateway reported errors:\n  ${filterLines.join('\n  ')}`);
  }
  if (args.demo) console.log(entry.stderr.filter((line) => line.startsWith('metric ')).join('\n'));
}

// ---------------------------------------------------------------- the report

// Half the clicks go to the slow instance, so the slow clicks are those above the median:
// at the default p90 a run's one or two cold lookups would weigh as much as the version.
const REPORT_ARGS = ['--since', '10m', '--by', 'instance,region', '--slow-percentile', '50'];

function runReport(stack, format) {
  const args = ['--jaeger', stack.otlp, ...REPORT_ARGS, '--format', format];
  return new Promise((done, fail) => {
    const child = spawn(join(BIN_DIR, 'consul-enricher-report'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => { stdout += chunk; });
    child.stderr.on('data', (chunk) => { stderr += chunk; });
    child.on('error', fail);
    child.on('exit', (code) => {
      if (code === 0) done(stdout);
      else fail(new Error(`consul-enricher-report exited ${code}: ${stderr.trim()}`));
    });
  });
}

// Every click joined to its gateway span, the slow instance's version named as the cause,
// and the slowest clicks listed all served by that instance.
function checkReport(report, clicks) {
  const failures = [];
  if (report.clicks !== clicks) failures.push(`${report.clicks} clicks found, ${clicks} made`);
  if (report.joined_clicks !== clicks) failures.push(`${report.joined_clicks} of ${clicks} clicks joined to a gateway span`);
  const cause = report.separation?.cause;
  if (cause?.attribute !== 'consul.service.meta.version' || cause?.value !== SLOW_INSTANCE.version) {
    failures.push(`cause ${cause?.attribute}=${cause?.value}, expected consul.service.meta.version=${SLOW_INSTANCE.version}`);
  }
  const elsewhere = (report.slowest ?? []).filter((click) => click.attributes['consul.service.id'] !== SLOW_INSTANCE.id);
  if (report.slowest?.length === 0 || elsewhere.length > 0) {
    failures.push(`slowest clicks not on ${SLOW_INSTANCE.id}: ${JSON.stringify(elsewhere.length > 0 ? elsewhere : report.slowest)}`);
  }
  return failures;
}

async function reportOn(stack, args, tally) {
  if (args.demo) {
    console.log(`\n== consul-enricher-report --jaeger ${stack.otlp} ${REPORT_ARGS.join(' ')}\n`);
    console.log(await runReport(stack, 'text'));
    return;
  }
  const clicks = args.clicks * args.flavours.length;
  const failures = checkReport(JSON.parse(await runReport(stack, 'json')), clicks);
  if (failures.length === 0) {
    tally.passed += 1;
    console.log(`ok   report: ${clicks} clicks, the slow ones on ${SLOW_INSTANCE.id} (${SLOW_INSTANCE.version}) named as the cause`);
  } else {
    tally.failed += 1;
    console.log(`FAIL report:\n  - ${failures.join('\n  - ')}`);
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const tally = { passed: 0, failed: 0 };
  let stack;
  const interrupted = () => {
    stopAll().finally(() => process.exit(130));
  };
  process.on('SIGINT', interrupted);
  process.on('SIGTERM', interrupted);
  try {
    stack = await startStack();
    console.log(`consul ${stack.consul}, receiver ${stack.otlp}, page ${stack.webOrigin}, echo ${stack.echoes.map((e) => `${e.id}@${e.address} (${e.version}, ${e.region})`).join(' ')}`);
    for (const flavour of args.flavours) {
      await runFlavour(flavour, stack, args, tally);
    }
    await reportOn(stack, args, tally);
  } catch (error) {
    tally.failed += 1;
    console.log(`FAIL ${error.stack ?? error}`);
    for (const entry of started) {
      console.log(`--- ${entry.name} stderr (last lines)\n${entry.stderr.slice(-40).join('\n')}`);
    }
  } finally {
    stack?.web.close();
    await stopAll();
  }
  console.log(`${tally.passed} passed, ${tally.failed} failed`);
  process.exitCode = tally.failed === 0 ? 0 : 1;
}

await main();
