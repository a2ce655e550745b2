// Acceptance: Redis killed mid-run → getOrSet keeps answering from the factory, nothing throws,
// no unhandled rejection; Redis restarted → the circuit closes and caching resumes.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { createCache } from '../dist/esm/index.js';
import { makeClient, silent, startRedis, waitFor } from './helpers.mjs';

const unhandled = [];
process.on('unhandledRejection', (e) => unhandled.push(e));

for (const lib of ['ioredis', 'node-redis']) {
  describe(`resilience via ${lib}`, () => {
    let server;
    let conn;
    let cache;
    after(async () => {
      await cache?.close();
      await conn?.close();
      await server?.stop();
    });

    test('S4.1 S4.3 Redis killed: getOrSet answers from the factory, circuit opens; restarted: circuit closes, caching resumes', async () => {
      server = await startRedis();
      const port = server.port;
      conn = await makeClient(lib, server.url);
      const events = [];
      cache = createCache({
        redis: conn.client,
        logger: silent,
        prefix: 'r:',
        commandTimeout: 300,
        retry: { retries: 1, baseDelay: 10, maxDelay: 50 },
        circuitBreaker: { threshold: 3, cooldown: 200 },
      });
      for (const e of ['circuit_open', 'circuit_close']) cache.on(e, () => events.push(e));
      const errors = [];
      cache.on('error', (e) => errors.push(e));
      let calls = 0;
      const factory = async () => (calls++, `v${calls}`);
      assert.equal(await cache.getOrSet({ key: 'warm', ttl: 60, factory }), 'v1');
      assert.equal(await cache.getOrSet({ key: 'warm', ttl: 60, factory }), 'v1');
      assert.equal(calls, 1);

      await server.kill();
      for (let i = 0; i < 30; i++) {
        const t0 = Date.now();
        const before = calls;
        const v = await cache.getOrSet({ key: 'warm', ttl: 60, factory });
        assert.equal(calls, before + 1, 'the factory answered');
        assert.equal(v, `v${calls}`);
        assert.ok(Date.now() - t0 < 2000, `call ${i} took ${Date.now() - t0} ms`);
      }
      assert.equal(await cache.get('warm'), undefined);
      assert.equal(await cache.set('x', 1), false);
      assert.equal(await cache.delete('x'), 0);
      assert.equal(await cache.invalidateTags(['t']), 0);
      assert.equal(await cache.invalidate({ pattern: '*' }), 0);
      assert.equal(await cache.stats(), null);
      assert.deepEqual(events, ['circuit_open']);
      assert.equal(cache.metrics().circuit === 'closed', false);
      assert.ok(errors.length > 0, 'errors are emitted');
      // open circuit: no Redis round-trip at all
      const t0 = Date.now();
      for (let i = 0; i < 100; i++) await cache.getOrSet({ key: 'fast', ttl: 60, factory });
      assert.ok(Date.now() - t0 < 500, `open circuit skips Redis (${Date.now() - t0} ms for 100 calls)`);

      server = await startRedis({ port });
      await waitFor(() => events.includes('circuit_close'), { timeout: 30_000, what: 'circuit_close' });
      assert.equal(cache.metrics().circuit, 'closed');
      // caching resumes: a call fills (the server holds the entry), the next one is a hit
      let filled;
      await waitFor(async () => {
        filled = await cache.getOrSet({ key: 'back', ttl: 60, factory });
        return server.cli('EXISTS', 'r:back') === '1';
      }, { timeout: 20_000, what: 'a fill after restart' });
      const n = calls;
      assert.equal(await cache.getOrSet({ key: 'back', ttl: 60, factory }), filled);
      assert.equal(calls, n, 'served from Redis, no factory call');
      assert.ok(cache.metrics().hits >= 2);
      assert.deepEqual(unhandled, []);
    });

    test('S4.2 a parked wait whose server dies answers from the factory at once (never re-sent)', async () => {
      const srv = await startRedis();
      const c1 = await makeClient(lib, srv.url);
      const c2 = await makeClient(lib, srv.url);
      const holder = createCache({ redis: c1.client, logger: silent, prefix: 'w:', commandTimeout: 300, retry: { retries: 0 } });
      const waiter = createCache({ redis: c2.client, logger: silent, prefix: 'w:', commandTimeout: 300, retry: { retries: 0 }, maxWait: 10_000, waitTimeout: 20_000 });
      try {
        let release;
        const gate = new Promise((r) => (release = r));
        const ph = holder.getOrSet({ key: 'k', ttl: 60, factory: async () => (await gate, 'H') });
        await waitFor(() => srv.cli('CACHE.INSPECT', 'w:k').includes('"active":true'), { what: 'lease held' });
        const t0 = Date.now();
        const pw = waiter.getOrSet({ key: 'k', ttl: 60, factory: async () => 'W' });
        await waitFor(() => JSON.parse(srv.cli('CACHE.STATS')).waiters === 1, { what: 'a parked waiter' });
        await srv.kill();
        assert.equal(await pw, 'W', 'the waiter fell back to its factory');
        assert.ok(Date.now() - t0 < 5000, `answered in ${Date.now() - t0} ms, not after the 10 s WAIT`);
        assert.equal(waiter.metrics().fail_open, 1);
        release();
        assert.equal(await ph, 'H');
        assert.deepEqual(unhandled, []);
      } finally {
        await holder.close();
        await waiter.close();
        await c1.close();
        await c2.close();
        await srv.stop();
      }
    });
  });
}

describe('late detection', () => {
  test('S5.1 Redis down at start (mode unknown), then up without the module: the cache switches to fallback mode', async () => {
    const { freePort } = await import('./helpers.mjs');
    const { Redis } = await import('ioredis');
    const port = await freePort();
    const redis = new Redis({ host: '127.0.0.1', port, lazyConnect: true, retryStrategy: () => 100 });
    redis.on('error', () => {});
    const warns = [];
    const cache = createCache({
      redis,
      logger: { ...silent, warn: (m) => warns.push(m) },
      connectTimeout: 300,
      commandTimeout: 300,
      retry: { retries: 0 },
      circuitBreaker: { threshold: 2, cooldown: 100 },
    });
    let server;
    try {
      await cache.connect();
      assert.equal(cache.mode, 'module', 'assumed while the server could not be asked');
      assert.equal(await cache.getOrSet({ key: 'k', ttl: 60, factory: () => 'f' }), 'f');
      server = await startRedis({ module: false, port });
      await waitFor(async () => {
        await cache.set('k', 'v');
        return cache.mode === 'fallback';
      }, { timeout: 20_000, what: 'fallback mode' });
      assert.equal(warns.filter((w) => w.includes('fallback mode')).length, 1);
      assert.equal(await cache.set('k', 'v'), true);
      assert.equal(await cache.get('k'), 'v');
      assert.deepEqual(unhandled, []);
    } finally {
      await cache.close();
      redis.disconnect();
      await server?.stop();
    }
  });
});

describe('slow server', () => {
  test('S4.2 S4.3 timeouts are retried, count as failures and open the circuit; getOrSet still answers', async () => {
    const server = await startRedis();
    const conn = await makeClient('ioredis', server.url);
    const cache = createCache({
      redis: conn.client,
      logger: silent,
      commandTimeout: 100,
      retry: { retries: 1, baseDelay: 5, maxDelay: 10 },
      circuitBreaker: { threshold: 2, cooldown: 60_000 },
    });
    const events = [];
    cache.on('circuit_open', () => events.push('circuit_open'));
    try {
      await cache.connect();
      await cache.set('k', 'v');
      // the server stops answering for 2 s while the connection stays up
      assert.equal(server.cli('CLIENT', 'PAUSE', '2000', 'ALL'), 'OK');
      const t0 = Date.now();
      assert.equal(await cache.get('k'), undefined, 'timed out: a miss');
      assert.equal(cache.metrics().retries, 1, 'the timeout was retried once');
      assert.equal(await cache.getOrSet({ key: 'g', ttl: 10, factory: () => 'f' }), 'f');
      assert.deepEqual(events, ['circuit_open']);
      assert.ok(Date.now() - t0 < 1500, `answered without waiting for the server (${Date.now() - t0} ms)`);
    } finally {
      await cache.close();
      await conn.close();
      await server.stop();
    }
  });
});
