// Unit test of the page's run-time settings (web/src/config.js): query parameters,
// defaults, and which URLs get trace headers. Run: node --test tests/demo/web_config.test.mjs
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULTS, gatewayOriginPatterns, readConfig } from '../../web/src/config.js';

test('defaults are the ports docker-compose.yml publishes', () => {
  const config = readConfig('');
  assert.deepEqual(config.gateways, { kong: 'http://localhost:8000', envoy: 'http://localhost:10000' });
  assert.equal(config.selected, 'kong');
  assert.equal(config.otlp, DEFAULTS.otlp);
  assert.equal(config.jaeger, 'http://localhost:16686');
});

test('?gateway=envoy selects Envoy; other parameters override the URLs', () => {
  const config = readConfig('?gateway=envoy&envoy=http://gw.example:9000/&jaeger=http://j.example/ui/&otlp=http://c.example:4318/v1/traces');
  assert.equal(config.selected, 'envoy');
  assert.equal(config.gateways.envoy, 'http://gw.example:9000');
  assert.equal(config.jaeger, 'http://j.example/ui');
  assert.equal(config.otlp, 'http://c.example:4318/v1/traces');
});

test('?gateway=<url> adds a custom gateway and selects it', () => {
  const config = readConfig('?gateway=https://api.example.com');
  assert.equal(config.selected, 'custom');
  assert.equal(config.gateways.custom, 'https://api.example.com');
  assert.equal(config.gateways.kong, DEFAULTS.kong);
});

test('bad URLs are refused with the parameter named', () => {
  assert.throws(() => readConfig('?gateway=not a url'), /"gateway" is not a URL/);
  assert.throws(() => readConfig('?otlp=ftp://c.example/v1/traces'), /"otlp" must be an http\(s\) URL/);
});

test('trace headers go to the gateways only, matched by exact origin', () => {
  const patterns = gatewayOriginPatterns(readConfig('').gateways);
  const propagates = (url) => patterns.some((pattern) => pattern.test(url));
  assert.ok(propagates('http://localhost:8000/echo'));
  assert.ok(propagates('http://localhost:10000/echo'));
  assert.ok(!propagates('http://localhost:80001/echo'));
  assert.ok(!propagates('http://localhost:8000.evil.example/echo'));
  assert.ok(!propagates('http://localhost:4318/v1/traces'));
});
