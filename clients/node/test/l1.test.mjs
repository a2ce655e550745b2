// L1 coherence: two instances, each with an in-process LRU kept coherent by CLIENT TRACKING.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createCache } from '../dist/esm/index.js';
import { makeClient, silent, sleep, startRedis, waitFor } from './helpers.mjs';

for (const [lib, module] of [['ioredis', true], ['node-redis', true], ['ioredis', false]]) {
  describe(`L1 via ${lib} (${module ? 'module' : 'fallback'})`, () => {
    let server;
    const conns = [];
    const caches = [];
    let n = 0;
    async function pair() {
      const prefix = `l1-${++n}:`;
      const make = async () => {
        const c = await makeClient(lib, server.url);
        conns.push(c);
        const cache = createCache({ redis: c.client, logger: silent, prefix, l1: { maxEntries: 100, ttl: 60 } });
        caches.push(cache);
        await cache.connect();
        return cache;
      };
      return [await make(), await make()];
    }
    /** Read until L1 holds the key (the echo of our own write may drop it once). */
    async function warm(cache, key) {
      await waitFor(async () => (await fromL1(cache, key)).l1, { timeout: 2000, interval: 2, what: `L1 holds ${key}` });
    }
    /** true when `cache.get(key)` was answered by L1 (no Redis round-trip). */
    async function fromL1(cache, key) {
      const before = cache.metrics().l1_hits;
      const v = await cache.get(key);
      return { v, l1: cache.metrics().l1_hits === before + 1 };
    }
    before(async () => {
      server = await startRedis({ module });
    });
    after(async () => {
      for (const c of caches) await c.close();
      for (const c of conns) await c.close();
      await server?.stop();
    });

    test('S6.1 S6.2 one instance invalidates a tag, the other stops serving the key from L1 within 100 ms', async () => {
      const [a, b] = await pair();
      let calls = 0;
      await b.getOrSet({ key: 'k', ttl: 60, tags: ['prod'], factory: () => (calls++, 'v1') });
      await warm(b, 'k');
      assert.deepEqual(await fromL1(b, 'k'), { v: 'v1', l1: true });
      assert.equal(await a.invalidateTags(['prod']), 1);
      const t0 = Date.now();
      await waitFor(async () => (await fromL1(b, 'k')).l1 === false, { timeout: 100, interval: 2, what: 'L1 drop' });
      assert.ok(Date.now() - t0 <= 100);
      assert.deepEqual(await fromL1(b, 'k'), { v: undefined, l1: false });
      assert.equal(calls, 1);
    });

    test('S6.2 set and delete on one instance drop the key from the other L1', async () => {
      const [a, b] = await pair();
      await a.set('s', 'one');
      await warm(b, 's');
      await a.set('s', 'two');
      await waitFor(async () => (await fromL1(b, 's')).v === 'two', { timeout: 100, interval: 2, what: 'new value' });
      await warm(b, 's');
      await a.delete('s');
      await waitFor(async () => (await fromL1(b, 's')).v === undefined, { timeout: 100, interval: 2, what: 'delete seen' });
    });

    test('S6.2 a pattern invalidation and FLUSHALL reach the other L1', async () => {
      const [a, b] = await pair();
      await a.set('p:1', 1, { tenant: 'tp' });
      await warm(b, 'p:1');
      assert.equal(await a.invalidate({ tenant: 'tp', pattern: 'p:*' }), 1);
      await waitFor(async () => (await fromL1(b, 'p:1')).l1 === false, { timeout: 100, interval: 2, what: 'pattern invalidation seen' });
      await a.set('f', 1);
      await warm(b, 'f');
      server.cli('FLUSHALL');
      await waitFor(async () => (await fromL1(b, 'f')).v === undefined, { timeout: 100, interval: 2, what: 'flush seen' });
    });

    test('S6.1 the L1 entry never outlives the Redis fresh time', async () => {
      const [, b] = await pair();
      await b.getOrSet({ key: 'short', ttl: 0.3, grace: 0, factory: () => 'x' });
      const t0 = Date.now();
      await warm(b, 'short');
      await sleep(Math.max(0, 350 - (Date.now() - t0)));
      assert.equal((await fromL1(b, 'short')).l1, false);
    });

    test('S6.2 a lost tracking connection clears L1 and L1 is bypassed until it is back', async () => {
      const [, b] = await pair();
      await b.set('t', 1);
      await warm(b, 't');
      const ids = server
        .cli('CLIENT', 'LIST')
        .split('\n')
        .filter((l) => l.includes('name=tagcache-tracking'))
        .map((l) => /id=(\d+)/.exec(l)[1]);
      assert.ok(ids.length >= 1);
      for (const id of ids) server.cli('CLIENT', 'KILL', 'ID', id);
      await waitFor(async () => (await fromL1(b, 't')).l1 === false, { timeout: 1000, interval: 2, what: 'L1 cleared' });
      await waitFor(async () => (await b.get('t'), (await fromL1(b, 't')).l1), { timeout: 5000, what: 'tracking back' });
    });
  });
}
