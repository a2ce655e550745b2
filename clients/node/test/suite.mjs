// The functional suite every mode and library must pass: module mode with ioredis and node-redis,
// fallback mode (plain redis-server) with both.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createCache, TimeoutError } from '../dist/esm/index.js';
import { makeClient, silent, sleep, startRedis, waitFor } from './helpers.mjs';

export function functionalSuite(lib, { module }) {
  const mode = module ? 'module' : 'fallback';
  describe(`${mode} mode via ${lib}`, () => {
    let server;
    let conn;
    let raw; // an independent ioredis connection to look at the server
    const caches = [];
    let n = 0;
    const fresh = (opts = {}) => {
      const c = createCache({ redis: conn.client, logger: silent, prefix: `p${++n}:`, ...opts });
      caches.push(c);
      return c;
    };

    before(async () => {
      server = await startRedis({ module });
      conn = await makeClient(lib, server.url);
      raw = (await makeClient('ioredis', server.url)).client;
    });
    after(async () => {
      for (const c of caches) await c.close();
      await conn?.close();
      raw?.disconnect();
      await server?.stop();
    });

    test('S5.1 the mode is detected at connect', async () => {
      const c = fresh();
      await c.connect();
      assert.equal(c.mode, mode);
      assert.equal(c.metrics().mode, mode);
    });

    test('S5.1 fallback is announced once at warn level', async () => {
      const warns = [];
      const c = fresh({ logger: { ...silent, warn: (m) => warns.push(m) } });
      await c.connect();
      await c.set('x', 1);
      await c.get('x');
      const fallbackWarns = warns.filter((w) => w.includes('fallback mode'));
      assert.equal(fallbackWarns.length, module ? 0 : 1);
      if (!module) for (const lost of ['parked waiters', 'fenced fills', 'tag', 'SCAN']) assert.ok(fallbackWarns[0].includes(lost), lost);
    });

    test('S1.1 S1.3 S3.1 set/get/delete under the prefix, ttl as PX, grace as STALE', async () => {
      const c = fresh();
      assert.equal(await c.set('k', { a: 1 }, { ttl: 1.5, grace: 3 }), true);
      assert.deepEqual(await c.get('k'), { a: 1 });
      const pttl = await raw.pttl(`p${n}:k`);
      assert.ok(pttl > 4000 && pttl <= 4500, `pttl ${pttl}`);
      assert.equal(await c.get('nope'), undefined);
      await c.set('k2', 'v');
      assert.equal(await c.delete('k', 'k2', 'nope'), 2);
      assert.equal(await c.get('k'), undefined);
    });

    test('S1.2 binary values: Buffers round-trip as Buffers, JSON as JSON', async () => {
      const c = fresh();
      const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
      await c.set('bin', all);
      const back = await c.get('bin');
      assert.ok(Buffer.isBuffer(back));
      assert.ok(back.equals(all));
      const doc = { s: 'é€😀\u0000', n: [1, 2.5, null], t: true };
      await c.set('json', doc);
      assert.deepEqual(await c.get('json'), doc);
      const got = await c.getOrSet({ key: 'bin2', ttl: 10, factory: () => all });
      assert.ok(got.equals(all));
      const again = await c.getOrSet({ key: 'bin2', ttl: 10, factory: () => assert.fail('factory on a hit') });
      assert.ok(Buffer.isBuffer(again) && again.equals(all));
    });

    test('S1.2 a pluggable serializer replaces both directions', async () => {
      const c = fresh({ serializer: { serialize: (v) => `<${v}>`, deserialize: (b) => b.toString().slice(1, -1) } });
      await c.set('s', 'abc');
      const stored = module ? await raw.callBuffer('CACHE.GET', `p${n}:s`) : await raw.getBuffer(`p${n}:s`);
      assert.ok(stored.toString('latin1').endsWith('<abc>'), 'the serializer wrote the bytes');
      assert.equal(await c.get('s'), 'abc');
    });

    test('the reads of one tick reach the socket in one write (ioredis: corked per tick)', { skip: lib !== 'ioredis' }, async () => {
      const c = fresh();
      await c.connect();
      for (let i = 0; i < 20; i++) await c.set(`w${i}`, i);
      const socket = conn.client.stream;
      let writes = 0;
      const { _write, _writev } = socket;
      socket._write = function (...a) { writes++; return _write.apply(this, a); };
      socket._writev = function (...a) { writes++; return _writev.apply(this, a); };
      try {
        const got = await Promise.all(Array.from({ length: 20 }, (_, i) => c.getOrSet({ key: `w${i}`, ttl: 10, factory: () => -1 })));
        assert.deepEqual(got, Array.from({ length: 20 }, (_, i) => i));
      } finally {
        socket._write = _write;
        socket._writev = _writev;
      }
      assert.equal(writes, 1);
    });

    test('S2.2 S2.3 one factory call, FILL, then HIT', async () => {
      const c = fresh();
      let calls = 0;
      const factory = async () => {
        calls++;
        await sleep(30);
        return { v: 42 };
      };
      const vals = await Promise.all(Array.from({ length: 50 }, () => c.getOrSet({ key: 'g', ttl: 10, factory })));
      assert.equal(calls, 1);
      for (const v of vals) assert.deepEqual(v, { v: 42 });
      assert.deepEqual(await c.getOrSet({ key: 'g', ttl: 10, factory }), { v: 42 });
      assert.equal(calls, 1);
      const m = c.metrics();
      assert.equal(m.factory_calls, 1);
      assert.equal(m.factory_latency.count, 1);
      assert.ok(m.factory_latency.sum_ms >= 25 && m.factory_latency.max_ms === m.factory_latency.sum_ms, JSON.stringify(m.factory_latency));
      assert.equal(m.l1_hits, 0);
      assert.equal(m.errors, 0);
      assert.equal(m.circuit, 'closed');
      assert.equal(m.fills, 1);
      assert.equal(m.misses, 1);
      assert.equal(m.hits, 1);
      assert.deepEqual(await c.get('g'), { v: 42 });
    });

    test('S2.3 LEASE-refused fill still returns the value', async () => {
      const c = fresh();
      const rejected = [];
      c.on('fill_rejected', (e) => rejected.push(e.key));
      const v = await c.getOrSet({
        key: 'lr',
        ttl: 10,
        factory: async () => {
          await c.set('lr', 'newer'); // a write that lands while we compute voids our lease
          return 'mine';
        },
      });
      assert.equal(v, 'mine');
      assert.equal(c.metrics().fills_rejected, 1);
      assert.equal(c.metrics().fills, 0);
      assert.deepEqual(rejected, [`p${n}:lr`]);
      assert.equal(await c.get('lr'), 'newer');
    });

    test('S2.4 STALE serves the stale value and refreshes once in the background', async () => {
      const c = fresh();
      await c.set('swr', 'old', { ttl: 0.2, grace: 30 });
      await waitFor(async () => (await c.get('swr')) === undefined, { what: 'entry stale' });
      let calls = 0;
      let release;
      const gate = new Promise((r) => (release = r));
      const factory = async (ctx) => {
        calls++;
        assert.equal(ctx.stale, 'old');
        await gate;
        return 'new';
      };
      const staleEvents = [];
      c.on('stale', (e) => staleEvents.push(e.refreshing));
      const vals = await Promise.all(Array.from({ length: 20 }, () => c.getOrSet({ key: 'swr', ttl: 10, factory })));
      assert.deepEqual(new Set(vals), new Set(['old']));
      // the refresh is still running: another caller is told STALE without a token
      assert.equal(await c.getOrSet({ key: 'swr', ttl: 10, factory }), 'old');
      assert.equal(calls, 1);
      assert.deepEqual(staleEvents, [true, false], 'one refresher, then a stale read without a token');
      release();
      await waitFor(async () => (await c.get('swr')) === 'new', { what: 'refreshed value' });
      assert.equal(calls, 1);
      assert.equal(c.metrics().stale, 2);
    });

    test('S2.5 BUSY: a second instance waits for the filler instead of calling its factory', async () => {
      const other = await makeClient(lib, server.url);
      try {
        const a = fresh();
        const b = createCache({ redis: other.client, logger: silent, prefix: `p${n}:` });
        let aCalls = 0;
        let bCalls = 0;
        const pa = a.getOrSet({ key: 'busy', ttl: 10, factory: async () => (aCalls++, await sleep(200), 'A') });
        await waitFor(() => aCalls === 1);
        const vb = await b.getOrSet({ key: 'busy', ttl: 10, factory: async () => (bCalls++, 'B') });
        assert.equal(vb, 'A');
        assert.equal(await pa, 'A');
        assert.equal(aCalls + bCalls, 1);
        await b.close();
      } finally {
        await other.close();
      }
    });

    test('S2.5 when the wait runs out the factory is called uncached (fail open)', async () => {
      const a = fresh();
      const b = fresh({ prefix: `p${n}:` });
      let release;
      const gate = new Promise((r) => (release = r));
      const pa = a.getOrSet({ key: 'slow', ttl: 10, factory: async () => (await gate, 'A') });
      await sleep(20);
      const t0 = Date.now();
      const vb = await b.getOrSet({ key: 'slow', ttl: 10, timeout: 150, factory: async () => 'B' });
      assert.equal(vb, 'B');
      assert.ok(Date.now() - t0 >= 140, 'waited for the filler first');
      assert.equal(b.metrics().fail_open, 1);
      release();
      assert.equal(await pa, 'A');
      assert.equal(await b.get('slow'), 'A');
    });

    test('S2.6 factory context: skip, setTtl, setTags', async () => {
      const c = fresh();
      assert.equal(await c.getOrSet({ key: 'sk', ttl: 10, factory: (ctx) => (ctx.skip(), 'x') }), 'x');
      assert.equal(await c.get('sk'), undefined);
      let calls = 0;
      await c.getOrSet({ key: 'sk', ttl: 10, factory: () => (calls++, 'y') });
      assert.equal(calls, 1, 'skip released the lease at once');
      await c.getOrSet({ key: 'tt', ttl: 10, factory: (ctx) => (ctx.setTtl(100), ctx.setTags(['ctx-tag']), 'z') });
      const pttl = await raw.pttl(`p${n}:tt`);
      assert.ok(pttl > 90_000 && pttl <= 100_000, `pttl ${pttl}`);
      assert.equal(await c.invalidateTags(['ctx-tag']), 1);
      assert.equal(await c.get('tt'), undefined);
    });

    test('S2.7 fail-safe: a failing factory serves the stale value; without it the error is raised', async () => {
      const c = fresh();
      await c.set('fs', 'last', { ttl: 0.2, grace: 30 });
      await waitFor(async () => (await c.get('fs')) === undefined, { what: 'entry stale' });
      const boom = new Error('db down');
      const v = await c.getOrSet({ key: 'fs', ttl: 10, timeout: 1000, failSafe: true, factory: async () => { throw boom; } });
      assert.equal(v, 'last');
      await assert.rejects(c.getOrSet({ key: 'fs', ttl: 10, timeout: 1000, factory: async () => { throw boom; } }), boom);
      // the lease was abandoned both times: a third caller refreshes at once
      const t0 = Date.now();
      assert.equal(await c.getOrSet({ key: 'fs', ttl: 10, timeout: 1000, factory: async () => 'fixed' }), 'fixed');
      assert.ok(Date.now() - t0 < 1000);
      assert.equal(c.metrics().factory_errors, 2);
      assert.equal(await c.get('fs'), 'fixed');
    });

    test('S2.7 a factory error on a miss abandons the lease and rethrows', async () => {
      const c = fresh();
      await assert.rejects(c.getOrSet({ key: 'fe', ttl: 10, factory: async () => { throw new Error('nope'); } }), /nope/);
      const t0 = Date.now();
      assert.equal(await c.getOrSet({ key: 'fe', ttl: 10, factory: async () => 'ok' }), 'ok');
      assert.ok(Date.now() - t0 < 1000, 'no wait on an abandoned lease');
    });

    test('S2.8 soft timeout serves stale and fills later', async () => {
      const c = fresh();
      await c.set('soft', 'old', { ttl: 0.2, grace: 30 });
      await waitFor(async () => (await c.get('soft')) === undefined, { what: 'entry stale' });
      let calls = 0;
      const t0 = Date.now();
      const v = await c.getOrSet({ key: 'soft', ttl: 10, timeout: 50, factory: async () => (calls++, await sleep(1500), 'new') });
      const took = Date.now() - t0;
      assert.equal(v, 'old');
      assert.ok(took >= 45 && took < 1200, `took ${took}`);
      await waitFor(async () => (await c.get('soft')) === 'new', { what: 'late fill' });
      assert.equal(calls, 1);
    });

    test('S2.8 hard timeout abandons and raises', async () => {
      const c = fresh();
      const t0 = Date.now();
      let finished;
      const lateDone = new Promise((r) => (finished = r));
      await assert.rejects(
        c.getOrSet({ key: 'hard', ttl: 10, hardTimeout: 100, factory: async () => (await sleep(1000), finished(), 'late') }),
        (e) => e instanceof TimeoutError,
      );
      assert.ok(Date.now() - t0 < 900);
      let calls = 0;
      assert.equal(await c.getOrSet({ key: 'hard', ttl: 10, factory: async () => (calls++, 'next') }), 'next');
      assert.equal(calls, 1, 'the abandoned lease was handed on at once');
      await lateDone; // the first factory's late result must not overwrite
      await c.get('hard');
      assert.equal(await c.get('hard'), 'next');
      assert.equal(c.metrics().fills, 1);
    });

    test('S2.8 hard timeout with failSafe serves the stale value', async () => {
      const c = fresh();
      await c.set('hardfs', 'old', { ttl: 0.2, grace: 30 });
      await waitFor(async () => (await c.get('hardfs')) === undefined, { what: 'entry stale' });
      const v = await c.getOrSet({ key: 'hardfs', ttl: 10, timeout: 5000, hardTimeout: 100, failSafe: true, factory: async () => (await sleep(600), 'late') });
      assert.equal(v, 'old');
    });

    test('S3.2 invalidate by tenant and pattern, invalidateTags, soft', async () => {
      const c = fresh();
      await c.set('a:1', 1, { tenant: 'tA', tags: ['red'] });
      await c.set('a:2', 2, { tenant: 'tA', tags: ['red', 'blue'] });
      await c.set('b:1', 3, { tenant: 'tB', tags: ['blue'] });
      await c.set('a:3', 4, { tenant: 'tB' });
      assert.equal(await c.invalidate({ tenant: 'tA', pattern: 'a:*' }), 2);
      assert.equal(await c.get('a:1'), undefined);
      assert.equal(await c.get('a:3'), 4);
      assert.equal(await c.invalidateTags(['blue']), 1);
      assert.equal(await c.get('b:1'), undefined);
      await c.set('s:1', 'soft', { ttl: 100, grace: 60, tags: ['green'] });
      assert.equal(await c.invalidateTags(['green'], { soft: true }), 1);
      assert.equal(await c.get('s:1'), undefined, 'soft: no longer fresh');
      assert.equal(await c.getOrSet({ key: 's:1', ttl: 10, factory: async () => 'refreshed' }), 'soft', 'still servable stale');
      assert.equal(await c.invalidate({ tenant: '*', pattern: '*' }), 2); // a:3 and s:1
    });

    test('S1.1 the cache default tenant scopes invalidate', async () => {
      const c = fresh({ tenant: 'acme' });
      const d = fresh({ prefix: `p${n}:`, tenant: 'other' });
      await c.set('x', 1);
      await d.set('y', 2);
      assert.equal(await c.invalidate({ pattern: '*' }), 1);
      assert.equal(await d.get('y'), 2);
    });

    test('S8.1 events and wrap()', async () => {
      const c = fresh();
      const seen = [];
      for (const e of ['hit', 'miss', 'fill', 'invalidate']) c.on(e, () => seen.push(e));
      assert.equal(await c.wrap('w', async () => 7, 10_000), 7);
      assert.equal(await c.wrap('w', async () => 8, 10_000), 7);
      const pttl = await raw.pttl(`p${n}:w`);
      assert.ok(pttl > 9000 && pttl <= 10_000, `wrap ttl is in ms: ${pttl}`);
      await c.invalidateTags(['none']);
      assert.deepEqual(seen, ['miss', 'fill', 'hit', 'invalidate']);
    });

    if (module) {
      test('early refresh (EARLY beta): a fresh value is served while one caller refreshes it', async () => {
        const c = fresh();
        let calls = 0;
        const factory = async () => (calls++, await sleep(20), `v${calls}`);
        assert.equal(await c.getOrSet({ key: 'early', ttl: 60, factory }), 'v1');
        // huge beta: the refresh probability is ~1 while the entry is still fresh
        assert.equal(await c.getOrSet({ key: 'early', ttl: 60, early: 1e9, factory }), 'v1');
        await waitFor(async () => (await c.get('early')) === 'v2', { what: 'early refresh filled' });
        assert.equal(calls, 2);
        assert.equal(await c.getOrSet({ key: 'early', ttl: 60, factory }), 'v2');
        assert.equal(calls, 2);
      });

      test('S2.1 the lease length: leaseMs is sent as LEASE, else the server default applies', async () => {
        const leaseOf = async (c, key) => {
          let release;
          const gate = new Promise((r) => (release = r));
          const p = c.getOrSet({ key, ttl: 10, factory: async () => (await gate, 'v') });
          let lease;
          await waitFor(async () => {
            const doc = JSON.parse((await raw.call('CACHE.INSPECT', `p${n}:${key}`)) ?? 'null');
            lease = doc?.lease;
            return lease?.active === true;
          }, { what: 'lease held' });
          release();
          await p;
          return lease.ttl_ms;
        };
        const short = await leaseOf(fresh({ leaseMs: 300 }), 'lease-short');
        assert.ok(short > 0 && short <= 300, `LEASE 300 sent: ${short}`);
        const dflt = await leaseOf(fresh(), 'lease-default');
        assert.ok(dflt > 300 && dflt <= 5000, `server default lease-ms: ${dflt}`);
      });

      test('S3.3 stats() is the CACHE.STATS document; per tenant', async () => {
        const c = fresh();
        await c.set('st', 1, { tenant: 'tS' });
        await c.get('st');
        const s = await c.stats();
        assert.equal(typeof s.hits, 'number');
        assert.ok(s.keys >= 1);
        const t = await c.stats({ tenant: 'tS' });
        assert.equal(t.keys, 1);
        assert.equal(t.hits, 1);
        assert.equal(t.sets, 1);
      });

      test('S1.1 S3.3 an explicit tenant gets every counter of its keys, misses included', async () => {
        const tenant = `ex${n}${lib === 'ioredis' ? 'i' : 'n'}`;
        const c = fresh({ tenant });
        const before = await c.stats({ tenant: '' });
        assert.equal(await c.get('k'), undefined); // miss, no entry yet
        assert.equal(await c.getOrSet({ key: 'k', factory: async () => 'a' }), 'a'); // miss + fill
        assert.equal(await c.getOrSet({ key: 'k', factory: async () => 'b' }), 'a'); // hit
        const t = await c.stats({ tenant });
        assert.deepEqual([t.hits, t.misses, t.fills, t.leases_granted, t.keys], [1, 2, 1, 1, 1]);
        const empty = await c.stats({ tenant: '' });
        assert.deepEqual([empty.hits, empty.misses], [before.hits, before.misses], 'nothing for the derived tenant');
      });

      test('S8.3 prometheus() renders global, tenant and namespace series', async () => {
        const c = fresh({ tenant: 'promT' });
        await c.set('ns:1', 1);
        await c.get('ns:1');
        const text = await c.prometheus();
        assert.match(text, /^# TYPE tagcache_hits counter$/m);
        assert.match(text, /^tagcache_keys \d+$/m);
        assert.match(text, new RegExp(`^tagcache_namespace_keys\\{namespace="p${n}"\\} 1$`, 'm'));
        assert.match(text, /^tagcache_tenant_hits\{tenant="promT"\} 1$/m);
        assert.match(text, /^tagcache_tenant_keys\{tenant="promT"\} 1$/m);
        assert.match(text, /^tagcache_client_hits 1$/m);
      });
    } else {
      test('S5.1 stats() is null without the module', async () => {
        assert.equal(await fresh().stats(), null);
      });
    }
  });
}
