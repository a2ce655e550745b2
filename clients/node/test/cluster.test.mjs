// 3-primary loopback cluster: keyed commands route by key; invalidateTags, invalidate({tenant:'*'})
// and stats() go to every primary and the replies are summed/merged.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createCache } from '../dist/esm/index.js';
import { silent, sleep, startCluster, waitFor } from './helpers.mjs';

async function clusterClient(lib, nodes) {
  if (lib === 'ioredis') {
    const { Cluster } = await import('ioredis');
    const c = new Cluster(nodes, { lazyConnect: true });
    c.on('error', () => {});
    await c.connect();
    await waitFor(() => c.nodes('master').length === 3, { what: 'ioredis sees 3 primaries' });
    return { client: c, close: () => c.disconnect() };
  }
  const { createCluster } = await import('redis');
  const c = createCluster({ rootNodes: nodes.map((n) => ({ url: `redis://${n.host}:${n.port}` })) });
  c.on('error', () => {});
  await c.connect();
  return { client: c, close: () => c.destroy() };
}

describe('cluster (3 primaries)', () => {
  let cluster;
  before(async () => {
    cluster = await startCluster();
  });
  after(async () => {
    await cluster?.stop();
  });

  const tenants = ['tA', 'tB', 'tC', 'tD', 'tE', 'tF', 'tG', 'tH', 'tI'];
  /** How many primaries hold at least one key. */
  const primariesWithKeys = () => cluster.servers.filter((s) => Number(s.cli('DBSIZE')) > 0).length;

  for (const lib of ['ioredis', 'node-redis']) {
    test(`S7.1 broadcast invalidateTags returns the total removed across primaries (${lib})`, async () => {
      for (const s of cluster.servers) s.cli('FLUSHALL');
      const conn = await clusterClient(lib, cluster.nodes);
      const cache = createCache({ redis: conn.client, logger: silent });
      try {
        await cache.connect();
        assert.equal(cache.mode, 'module');
        for (const t of tenants) {
          assert.equal(await cache.set(`item:{${t}}:1`, { t }, { ttl: 60, tags: ['shared'] }), true);
          assert.equal(await cache.set(`item:{${t}}:2`, { t }, { ttl: 60, tags: ['shared', 'other'] }), true);
        }
        assert.equal(primariesWithKeys(), 3, 'the keys are spread over the 3 primaries');
        const st = await cache.stats();
        assert.equal(st.keys, 18, 'stats() merged over primaries');
        for (const t of tenants) assert.equal((await cache.stats({ tenant: t })).keys, 2, `stats of tenant ${t}`);
        // an explicit tenant (keys under its hash tag): stats summed over primaries, invalidation routed
        for (const t of tenants) assert.equal(await cache.set(`explicit:{spread}:${t}`, 1, { ttl: 60, tenant: 'spread' }), true);
        assert.equal((await cache.stats({ tenant: 'spread' })).keys, tenants.length);
        assert.equal(await cache.invalidate({ tenant: 'spread', pattern: 'explicit:*' }), tenants.length);
        assert.equal(typeof st.hit_ratio, 'number');
        assert.equal(await cache.invalidateTags(['other']), 9);
        assert.equal(await cache.invalidateTags(['shared']), 9);
        for (const t of tenants) assert.equal(await cache.get(`item:{${t}}:1`), undefined);
        assert.equal((await cache.stats()).keys, 0);
      } finally {
        await cache.close();
        await conn.close();
      }
    });

    test(`S7.1 invalidate: tenant '*' on every primary, one tenant on its shard; getOrSet on a cluster (${lib})`, async () => {
      for (const s of cluster.servers) s.cli('FLUSHALL');
      const conn = await clusterClient(lib, cluster.nodes);
      const cache = createCache({ redis: conn.client, logger: silent, prefix: 'inv:' });
      try {
        for (const t of tenants) await cache.set(`x:{${t}}`, 1, { ttl: 60 });
        assert.equal(await cache.invalidate({ tenant: 'tA', pattern: '*' }), 1);
        assert.equal(await cache.invalidate({ tenant: '*', pattern: 'x:*' }), tenants.length - 1);
        const t = await cache.stats({ tenant: 'tB' });
        assert.equal(t.keys, 0);
        // stampede protection through a cluster client, including parked waits on its own pool
        const other = await clusterClient(lib, cluster.nodes);
        const cache2 = createCache({ redis: other.client, logger: silent, prefix: 'inv:' });
        let calls = 0;
        const factory = async () => (calls++, await sleep(100), 'v');
        const p1 = Promise.all(Array.from({ length: 100 }, () => cache.getOrSet({ key: 'g:{tC}', ttl: 60, factory })));
        await waitFor(() => calls === 1);
        const p2 = Promise.all(Array.from({ length: 100 }, () => cache2.getOrSet({ key: 'g:{tC}', ttl: 60, factory })));
        const all = [...(await p1), ...(await p2)];
        assert.equal(calls, 1);
        assert.ok(all.every((v) => v === 'v'));
        assert.equal(cache2.metrics().fail_open, 0);
        await cache2.close();
        await other.close();
      } finally {
        await cache.close();
        await conn.close();
      }
    });
  }

  for (const lib of ['ioredis', 'node-redis']) {
    test(`S6.2 S7.1 L1 coherence on a cluster: tracking on every primary (${lib})`, async () => {
      const ca = await clusterClient(lib, cluster.nodes);
      const cb = await clusterClient(lib, cluster.nodes);
      const a = createCache({ redis: ca.client, logger: silent, prefix: 'l1c:', l1: { maxEntries: 100, ttl: 60 } });
      const b = createCache({ redis: cb.client, logger: silent, prefix: 'l1c:', l1: { maxEntries: 100, ttl: 60 } });
      try {
        await a.connect();
        await b.connect();
        const keys = tenants.map((t) => `k:{${t}}`);
        for (const k of keys) await a.set(k, k, { ttl: 60, tags: ['ct'] });
        const viaL1 = async (k) => {
          const before = b.metrics().l1_hits;
          await b.get(k);
          return b.metrics().l1_hits === before + 1;
        };
        for (const k of keys) await waitFor(() => viaL1(k), { timeout: 2000, interval: 2, what: `L1 holds ${k}` });
        assert.equal(await a.invalidateTags(['ct']), keys.length);
        const t0 = Date.now();
        await waitFor(async () => {
          for (const k of keys) if (await viaL1(k)) return false;
          return true;
        }, { timeout: 100, interval: 2, what: 'every shard\'s invalidation reached L1' });
        assert.ok(Date.now() - t0 <= 100);
        for (const k of keys) assert.equal(await b.get(k), undefined);
      } finally {
        await a.close();
        await b.close();
        await ca.close();
        await cb.close();
      }
    });
  }

  describe('fallback mode on a cluster without the module', () => {
    let plain;
    before(async () => {
      plain = await startCluster({ module: false });
    });
    after(async () => {
      await plain?.stop();
    });
    for (const lib of ['ioredis', 'node-redis']) {
      test(`S5.1 S7.1 fallback on 3 primaries: getOrSet, tags, pattern invalidation by SCAN on every primary (${lib})`, async () => {
        for (const s of plain.servers) s.cli('FLUSHALL');
        const conn = await clusterClient(lib, plain.nodes);
        const cache = createCache({ redis: conn.client, logger: silent, prefix: 'fb:' });
        try {
          await cache.connect();
          assert.equal(cache.mode, 'fallback');
          for (const t of tenants) await cache.set(`item:{${t}}`, t, { ttl: 60, tags: ['all'] });
          assert.equal(plain.servers.filter((s) => Number(s.cli('DBSIZE')) > 0).length, 3);
          let calls = 0;
          const vals = await Promise.all(Array.from({ length: 50 }, () => cache.getOrSet({ key: 'g:{tA}', ttl: 60, factory: async () => (calls++, await sleep(30), 'v') })));
          assert.equal(calls, 1);
          assert.ok(vals.every((v) => v === 'v'));
          assert.equal(await cache.invalidate({ tenant: 'tB', pattern: 'item:*' }), 1);
          assert.equal(await cache.invalidate({ tenant: '*', pattern: 'item:*' }), tenants.length - 1);
          for (const t of tenants) await cache.set(`item:{${t}}`, t, { ttl: 60, tags: ['again'] });
          assert.equal(await cache.invalidateTags(['again']), tenants.length);
          for (const t of tenants) assert.equal(await cache.get(`item:{${t}}`), undefined);
          assert.equal(await cache.get('g:{tA}'), 'v');
        } finally {
          await cache.close();
          await conn.close();
        }
      });
    }
  });
});
