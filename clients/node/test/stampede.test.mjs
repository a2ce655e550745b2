// Acceptance: 1 000 concurrent getOrSet through ONE user client (ioredis and node-redis), one cold
// key and 1 000 different keys; and across 4 processes sharing the server.
import assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { createCache } from '../dist/esm/index.js';
import { makeClient, silent, sleep, startRedis, stats } from './helpers.mjs';

const FACTORY_MS = 50;

describe('stampede', () => {
  let server;
  before(async () => {
    server = await startRedis();
  });
  after(async () => {
    await server?.stop();
  });

  for (const lib of ['ioredis', 'node-redis']) {
    test(`S2.1 S2.2 1000 concurrent getOrSet on one cold key through one ${lib} client: 1 factory call`, async () => {
      const conn = await makeClient(lib, server.url);
      const cache = createCache({ redis: conn.client, logger: silent, prefix: `one-${lib}:` });
      try {
        const before = stats(server);
        let calls = 0;
        const vals = await Promise.all(
          Array.from({ length: 1000 }, () =>
            cache.getOrSet({ key: 'cold', ttl: 60, factory: async () => (calls++, await sleep(FACTORY_MS), { big: 'x'.repeat(100) }) }),
          ),
        );
        assert.equal(calls, 1);
        assert.equal(vals.length, 1000);
        for (const v of vals) assert.deepEqual(v, { big: 'x'.repeat(100) });
        assert.equal(stats(server).fills - before.fills, 1);
      } finally {
        await cache.close();
        await conn.close();
      }
    });

    test(`S2.1 1000 concurrent getOrSet on 1000 cold keys through one ${lib} client: 1 factory call each`, async () => {
      const conn = await makeClient(lib, server.url);
      const cache = createCache({ redis: conn.client, logger: silent, prefix: `many-${lib}:` });
      try {
        const calls = new Map();
        const vals = await Promise.all(
          Array.from({ length: 1000 }, (_, i) =>
            cache.getOrSet({
              key: `k${i}`,
              ttl: 60,
              factory: async () => {
                calls.set(i, (calls.get(i) ?? 0) + 1);
                await sleep(FACTORY_MS);
                return i;
              },
            }),
          ),
        );
        assert.equal(calls.size, 1000);
        for (const c of calls.values()) assert.equal(c, 1);
        vals.forEach((v, i) => assert.equal(v, i));
        assert.equal(cache.metrics().fills, 1000);
      } finally {
        await cache.close();
        await conn.close();
      }
    });
  }

  for (const lib of ['ioredis', 'node-redis']) {
    test(`S2.1 FILL never queues behind a parked wait: crossed leases between two instances complete at once (${lib})`, async () => {
      // P holds A's lease and waits for B; Q holds B's lease and waits for A. Were a WAIT parked on
      // the connection that carries the FILLs, both fills would queue behind the waits until
      // maxWait (2 s) ran out.
      const c1 = await makeClient(lib, server.url);
      const c2 = await makeClient(lib, server.url);
      const p = createCache({ redis: c1.client, logger: silent, prefix: `x-${lib}:`, maxWait: 2000 });
      const q = createCache({ redis: c2.client, logger: silent, prefix: `x-${lib}:`, maxWait: 2000 });
      try {
        const calls = { A: 0, B: 0 };
        const factory = (k) => async () => (calls[k]++, await sleep(100), `value-${k}`);
        const t0 = Date.now();
        const pa = p.getOrSet({ key: 'A', ttl: 60, factory: factory('A') });
        const qb = q.getOrSet({ key: 'B', ttl: 60, factory: factory('B') });
        await sleep(20); // both leases granted, factories running
        const pb = p.getOrSet({ key: 'B', ttl: 60, factory: factory('B') });
        const qa = q.getOrSet({ key: 'A', ttl: 60, factory: factory('A') });
        assert.deepEqual(await Promise.all([pa, qb, pb, qa]), ['value-A', 'value-B', 'value-B', 'value-A']);
        const took = Date.now() - t0;
        assert.deepEqual(calls, { A: 1, B: 1 });
        assert.ok(took < 1500, `took ${took} ms`);
        assert.equal(p.metrics().fail_open + q.metrics().fail_open, 0);
      } finally {
        await p.close();
        await q.close();
        await c1.close();
        await c2.close();
      }
    });
  }

  async function crossProcess({ keys, callers, prefix }) {
    const libs = ['ioredis', 'node-redis', 'ioredis', 'node-redis'];
    const children = libs.map(() => fork(new URL('./fixtures/stampede-child.mjs', import.meta.url), { stdio: 'inherit' }));
    try {
      await Promise.all(
        children.map(
          (ch, i) =>
            new Promise((resolve, reject) => {
              ch.once('message', (m) => (m.ready ? resolve() : reject(new Error('bad child'))));
              ch.once('exit', (c) => reject(new Error(`child exited ${c}`)));
              ch.send({ cmd: 'setup', url: server.url, lib: libs[i], keys, callers, factoryMs: FACTORY_MS, prefix });
            }),
        ),
      );
      const results = children.map((ch) => new Promise((resolve) => ch.once('message', resolve)));
      for (const ch of children) ch.send({ cmd: 'go' });
      return await Promise.all(results);
    } finally {
      for (const ch of children) if (ch.exitCode === null) ch.kill('SIGKILL');
    }
  }

  test('S2.1 4 processes, 250 callers each, one cold key: exactly 1 factory call in total', async () => {
    const getormarkCalls = () => Number(/cmdstat_cache\.getormark:calls=(\d+)/.exec(server.cli('INFO', 'commandstats'))?.[1] ?? 0);
    const callsBefore = getormarkCalls();
    const before = stats(server);
    const res = await crossProcess({ keys: ['shared'], callers: 250, prefix: 'xp1:' });
    const total = res.reduce((a, r) => a + (r.factoryCalls.shared ?? 0), 0);
    assert.equal(total, 1);
    for (const r of res) {
      assert.equal(r.allRight, true);
      assert.equal(r.answered, 250);
      assert.equal(r.failOpen, 0);
    }
    const after = stats(server);
    assert.equal(after.fills - before.fills, 1);
    assert.equal(after.leases_granted - before.leases_granted, 1);
    // processes without the lease were parked in the server (at most one WAIT each), not polling:
    // at most one plain ask + one WAIT per process
    const waits = after.waits - before.waits;
    assert.ok(waits <= 3, `waits ${waits}`);
    assert.equal(after.waits_served - before.waits_served, waits);
    assert.equal(after.wait_timeouts - before.wait_timeouts, 0);
    assert.ok(getormarkCalls() - callsBefore <= 4 + waits, `GETORMARK calls ${getormarkCalls() - callsBefore}`);
  });

  test('S2.1 4 processes, 300 shared cold keys (more waits than pooled connections): 1 factory call per key', async () => {
    const keys = Array.from({ length: 300 }, (_, i) => `k${i}`);
    const res = await crossProcess({ keys, callers: 2, prefix: 'xp2:' });
    for (const k of keys) {
      const total = res.reduce((a, r) => a + (r.factoryCalls[k] ?? 0), 0);
      assert.equal(total, 1, `factory calls for ${k}`);
    }
    for (const r of res) {
      assert.equal(r.allRight, true);
      assert.equal(r.answered, 600);
      assert.equal(r.failOpen, 0);
      assert.ok(r.waitConns <= 8, `bounded pool: ${r.waitConns}`);
    }
  });
});
