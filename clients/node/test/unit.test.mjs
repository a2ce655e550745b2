// Pieces with exact expectations: backoff, retries on transient errors (injected in front of a
// real server), LRU bound, stats merging, Prometheus text, both builds.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { after, before, describe, test } from 'node:test';
import { backoffDelay, createCache, mergeStats } from '../dist/esm/index.js';
import { L1Cache } from '../dist/esm/l1.js';
import { renderPrometheus } from '../dist/esm/prometheus.js';
import { makeClient, silent, startRedis } from './helpers.mjs';

test('S4.2 backoff is exponential with full jitter, capped by maxDelay', () => {
  assert.equal(backoffDelay(0, 50, 1000, () => 0.999999) < 50, true);
  assert.equal(backoffDelay(3, 50, 1000, () => 0.5), 200); // 0.5 × 400
  assert.equal(backoffDelay(10, 50, 1000, () => 0.5), 500); // capped at 1000
  assert.equal(backoffDelay(2, 50, 1000, () => 0), 0);
});

test('S6.1 the L1 LRU keeps at most maxEntries and evicts the least recently used', () => {
  const l1 = new L1Cache(2);
  l1.set('a', 1, 10_000);
  l1.set('b', 2, 10_000);
  assert.deepEqual(l1.get('a'), { value: 1 }); // a is now the most recent
  l1.set('c', 3, 10_000);
  assert.equal(l1.size, 2);
  assert.equal(l1.get('b'), undefined);
  assert.deepEqual(l1.get('c'), { value: 3 });
  l1.set('d', 4, 1, Date.now() - 10); // already expired
  assert.equal(l1.get('d'), undefined);
  assert.deepEqual(l1.peekStale('d'), { value: 4 }, 'kept as the last known value');
});

test('S7.1 stats merge: counters summed, ratios recomputed, namespaces merged', () => {
  const m = mergeStats([
    { hits: 3, misses: 1, hit_ratio: 0.75, keys: 2, namespaces: { a: { hits: 3, misses: 1, hit_ratio: 0.75, keys: 2 } } },
    { hits: 1, misses: 3, hit_ratio: 0.25, keys: 5, namespaces: { a: { hits: 0, misses: 2, hit_ratio: 0, keys: 1 }, b: { hits: 1, misses: 1, hit_ratio: 0.5, keys: 4 } } },
  ]);
  assert.deepEqual(m, {
    hits: 4,
    misses: 4,
    hit_ratio: 0.5,
    keys: 7,
    namespaces: { a: { hits: 3, misses: 3, hit_ratio: 0.5, keys: 3 }, b: { hits: 1, misses: 1, hit_ratio: 0.5, keys: 4 } },
  });
});

test('S8.3 Prometheus text: types, labels escaped', () => {
  const local = { hits: 1, misses: 0, stale: 0, l1_hits: 0, factory_calls: 2, factory_errors: 0, factory_latency: { count: 2, sum_ms: 500, max_ms: 300 }, fills: 1, fills_rejected: 0, fail_open: 0, errors: 0, retries: 0, circuit: 'open', mode: 'module', wait_connections: 0 };
  const text = renderPrometheus({ hits: 5, keys: 2, namespaces: { 'we"ird\\ns': { keys: 2 } } }, { t1: { hits: 4 } }, local);
  assert.match(text, /^# TYPE tagcache_hits counter\ntagcache_hits 5$/m);
  assert.match(text, /^# TYPE tagcache_keys gauge\ntagcache_keys 2$/m);
  assert.ok(text.includes('tagcache_namespace_keys{namespace="we\\"ird\\\\ns"} 2'));
  assert.match(text, /^tagcache_tenant_hits\{tenant="t1"\} 4$/m);
  assert.match(text, /^tagcache_client_factory_seconds_sum 0.5$/m);
  assert.match(text, /^tagcache_client_circuit_open 1$/m);
});

test('ESM and CJS builds export the same API, with type declarations', async () => {
  const require = createRequire(import.meta.url);
  const cjs = require('../dist/cjs/index.js');
  const esm = await import('../dist/esm/index.js');
  assert.deepEqual(Object.keys(cjs).sort(), Object.keys(esm).sort());
  assert.equal(typeof cjs.createCache, 'function');
  for (const f of ['../dist/cjs/index.d.ts', '../dist/esm/index.d.ts']) assert.ok(existsSync(new URL(f, import.meta.url)), f);
});

describe('with a real server', () => {
  let server;
  let conn;
  before(async () => {
    server = await startRedis();
    conn = await makeClient('ioredis', server.url);
  });
  after(async () => {
    await conn?.close();
    await server?.stop();
  });

  test('S4.2 transient errors are retried with backoff; other replies are not', async () => {
    let failNext = 0;
    const sent = [];
    // the real client, with connection resets injected in front of it
    const flaky = new Proxy(conn.client, {
      get(target, prop) {
        if (prop === 'callBuffer') {
          return (...args) => {
            sent.push(String(args[0]));
            if (failNext > 0) {
              failNext--;
              const e = new Error('read ECONNRESET');
              e.code = 'ECONNRESET';
              return Promise.reject(e);
            }
            return target.callBuffer(...args);
          };
        }
        const v = target[prop];
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    const cache = createCache({ redis: flaky, logger: silent, retry: { retries: 2, baseDelay: 5, maxDelay: 20 } });
    await cache.connect();
    await cache.set('k', 'v');
    failNext = 2;
    sent.length = 0;
    assert.equal(await cache.get('k'), 'v', 'two resets then success');
    assert.deepEqual(sent, ['CACHE.GET', 'CACHE.GET', 'CACHE.GET']);
    assert.equal(cache.metrics().retries, 2);
    failNext = 3;
    sent.length = 0;
    assert.equal(await cache.get('k'), undefined, 'retries exhausted: a miss, no throw');
    assert.equal(sent.length, 3);
    assert.equal(cache.metrics().errors, 1);
    sent.length = 0;
    await conn.client.set('plain', 'x');
    assert.equal(await cache.get('plain'), undefined, 'WRONGTYPE: not retried');
    assert.deepEqual(sent, ['CACHE.GET']);
    assert.equal(cache.metrics().circuit, 'closed', 'a server reply is not a connection failure');
    await cache.close();
  });

  test('a URL creates (and close() closes) the package\'s own client', async () => {
    const cache = createCache({ redis: server.url, logger: silent, prefix: 'url:' });
    await cache.connect();
    assert.equal(cache.mode, 'module');
    assert.equal(await cache.getOrSet({ key: 'k', ttl: 10, factory: () => 'v' }), 'v');
    assert.equal(await conn.client.call('CACHE.GET', 'url:k'), '"v"');
    const clients = () => server.cli('CLIENT', 'LIST').split('\n').length;
    const before = clients();
    await cache.close();
    const { waitFor } = await import('./helpers.mjs');
    await waitFor(() => clients() === before - 1, { what: 'own connection closed' });
  });

  test('commandTimeout 0 leaves timeouts to the client library', async () => {
    const cache = createCache({ redis: conn.client, logger: silent, prefix: 'ct0:', commandTimeout: 0 });
    assert.equal(await cache.getOrSet({ key: 'k', ttl: 10, factory: () => 'v' }), 'v');
    assert.equal(await cache.get('k'), 'v');
    assert.equal(cache.metrics().fills, 1);
    await cache.close();
  });

  test('S8.1 with a debug logger every event is a log line too', async () => {
    const lines = [];
    const cache = createCache({ redis: conn.client, prefix: 'dbg:', logger: { debug: (m) => lines.push(m) } });
    await cache.getOrSet({ key: 'k', ttl: 10, factory: () => 1 });
    await cache.getOrSet({ key: 'k', ttl: 10, factory: () => 1 });
    await cache.invalidateTags(['nothing']);
    assert.deepEqual(lines.map((l) => l.split(' ')[0]), ['miss', 'fill', 'hit', 'invalidate']);
    assert.equal(lines[0], 'miss {"key":"dbg:k"}');
    await cache.close();
  });

  test('S8.1 the logger receives errors and circuit changes', async () => {
    const lines = [];
    const log = (lvl) => (m) => lines.push(`${lvl}: ${m}`);
    const bad = new Proxy(conn.client, {
      get(target, prop) {
        if (prop === 'callBuffer') return (...a) => (String(a[0]) === 'CACHE.SET' ? Promise.reject(new Error('connect ETIMEDOUT')) : target.callBuffer(...a));
        const v = target[prop];
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    const cache = createCache({ redis: bad, logger: { debug() {}, info: log('info'), warn: log('warn'), error: log('error') }, retry: { retries: 0 }, circuitBreaker: { threshold: 2, cooldown: 50 } });
    await cache.connect();
    const events = [];
    cache.on('error', (e) => events.push(e.op));
    cache.on('circuit_open', () => events.push('circuit_open'));
    assert.equal(await cache.set('a', 1), false);
    assert.equal(await cache.set('a', 1), false);
    // the second failure opens the circuit before its error is reported
    assert.deepEqual(events, ['set', 'circuit_open', 'set']);
    assert.equal(await cache.set('a', 1), false);
    assert.deepEqual(events, ['set', 'circuit_open', 'set'], 'open circuit: refused without an error event per call');
    assert.ok(lines.some((l) => l.startsWith('error: set failed: connect ETIMEDOUT')));
    assert.ok(lines.some((l) => l.startsWith('warn: circuit open')));
    // the PING probe succeeds (PING is not failed by the proxy): the circuit closes
    const { waitFor } = await import('./helpers.mjs');
    await waitFor(() => lines.some((l) => l.startsWith('info: circuit closed')), { what: 'circuit closed log' });
    await cache.close();
  });
});
