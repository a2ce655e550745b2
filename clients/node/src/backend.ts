// The two ways of talking to Redis: the tagcache module's commands, or userland equivalents on a
// server without the module (fallback mode, README "Fallback mode").
import { randomBytes } from 'node:crypto';
import type { Arg, Driver } from './driver.js';

export type Mark =
  | { kind: 'HIT'; value: Buffer }
  | { kind: 'MISS'; token: Buffer }
  | { kind: 'STALE'; value: Buffer; token?: Buffer | undefined }
  | { kind: 'BUSY'; ms: number };

export interface WriteOpts {
  ttlMs?: number | undefined; // 0 = no expiry, undefined = server rules
  graceS?: number | undefined;
  tags?: readonly string[] | undefined;
  tenant?: string | undefined;
}

/**
 * Runs a command with the cache's timeout, retries and circuit breaker. `map` turns the reply into
 * the result; `recover` answers instead of a final failure (else the promise rejects).
 */
export type Exec = <T, R = T>(fn: () => Promise<T>, map?: (v: T) => R | Promise<R>, recover?: (e: unknown) => R | Promise<R>) => Promise<R>;

export interface Backend {
  readonly mode: 'module' | 'fallback';
  /** `early`: XFetch beta (module mode: `EARLY beta`; ignored in fallback mode). */
  /**
   * `leaseMs` undefined: the server's `tagcache.lease-ms` (module) / 5 000 ms (fallback). With
   * `then`/`recover` the reply is mapped (and a failure answered) without another promise.
   */
  /** `tenant`: whom the server counts a miss and its lease for (module mode: `TENANT t`). */
  getOrMark(key: string, leaseMs: number | undefined, early?: number, tenant?: string): Promise<Mark>;
  getOrMark<R>(
    key: string,
    leaseMs: number | undefined,
    early: number | undefined,
    tenant: string | undefined,
    then: (m: Mark) => R | Promise<R>,
    recover: (e: unknown) => R | Promise<R>,
  ): Promise<R>;
  /** A parked wait on a dedicated connection (module) or polling (fallback). */
  waitMark(key: string, leaseMs: number | undefined, waitMs: number, conn: Driver | undefined, tenant?: string): Promise<Mark>;
  fill(key: string, token: Buffer, value: Buffer, w: WriteOpts): Promise<boolean>;
  abandon(key: string, token: Buffer): Promise<boolean>;
  get(key: string, tenant?: string): Promise<Buffer | null>;
  set(key: string, value: Buffer, w: WriteOpts): Promise<void>;
  del(keys: string[]): Promise<number>;
  invalidate(tenant: string, pattern: string, soft: boolean): Promise<number>;
  invalidateTags(tags: readonly string[], soft: boolean): Promise<number>;
  stats(tenant: string | undefined): Promise<StatsDoc | null>;
  /** Fresh time left (ms; Infinity without expiry; 0 when stale or missing): bounds an L1 entry. */
  freshMs(key: string): Promise<number>;
}

export type StatsDoc = Record<string, unknown> & {
  namespaces?: Record<string, Record<string, number>>;
};

export function str(v: unknown): string {
  if (Buffer.isBuffer(v)) return v.toString('utf8');
  return String(v);
}

export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export function isLeaseError(e: unknown): boolean {
  return errorText(e).startsWith('LEASE');
}

function writeArgs(w: WriteOpts): Arg[] {
  const out: Arg[] = [];
  if (w.ttlMs !== undefined) {
    if (w.ttlMs <= 0) out.push('NOEXPIRE');
    else out.push('PX', String(Math.max(1, Math.round(w.ttlMs))));
  }
  if (w.graceS !== undefined) out.push('STALE', String(Math.max(0, Math.ceil(w.graceS))));
  if (w.tags && w.tags.length > 0) out.push('TAGS', String(w.tags.length), ...w.tags);
  if (w.tenant !== undefined && w.tenant !== '') out.push('TENANT', w.tenant);
  return out;
}

export function parseMark(reply: unknown): Mark {
  if (!Array.isArray(reply) || reply.length === 0) throw new Error(`unexpected GETORMARK reply: ${String(reply)}`);
  const k0: unknown = reply[0];
  // The kind's first letter is enough (H, M, S, B): no decoding on the hot path.
  const c = Buffer.isBuffer(k0) ? k0[0] : typeof k0 === 'string' ? k0.charCodeAt(0) : 0;
  const buf = (v: unknown): Buffer => (Buffer.isBuffer(v) ? v : Buffer.from(String(v)));
  switch (c) {
    case 72: // HIT
      return { kind: 'HIT', value: buf(reply[1]) };
    case 77: // MISS
      return { kind: 'MISS', token: buf(reply[1]) };
    case 83: // STALE
      return { kind: 'STALE', value: buf(reply[1]), token: reply.length > 2 && reply[2] != null ? buf(reply[2]) : undefined };
    case 66: // BUSY
      return { kind: 'BUSY', ms: Number(str(reply[1])) };
    default:
      throw new Error(`unexpected GETORMARK reply kind: ${str(k0)}`);
  }
}

const sum = (xs: unknown[]): number => xs.reduce<number>((a, x) => a + Number(x), 0);

/** Merge per-primary CACHE.STATS documents: counters summed, ratios recomputed, namespaces merged. */
export function mergeStats(docs: StatsDoc[]): StatsDoc {
  if (docs.length === 1) return docs[0] as StatsDoc;
  const out: StatsDoc = {};
  const ns: Record<string, Record<string, number>> = {};
  for (const d of docs) {
    for (const [k, v] of Object.entries(d)) {
      if (k === 'namespaces' && v && typeof v === 'object') {
        for (const [name, fields] of Object.entries(v as Record<string, Record<string, number>>)) {
          const t = (ns[name] ??= {});
          for (const [f, n] of Object.entries(fields)) t[f] = (t[f] ?? 0) + Number(n);
        }
      } else if (typeof v === 'number') {
        out[k] = ((out[k] as number | undefined) ?? 0) + v;
      }
    }
  }
  const ratio = (h: number, m: number): number => (h + m === 0 ? 0 : Math.round((h / (h + m)) * 1000) / 1000);
  if ('hit_ratio' in out) out.hit_ratio = ratio(Number(out.hits ?? 0), Number(out.misses ?? 0));
  for (const t of Object.values(ns)) if ('hit_ratio' in t) t.hit_ratio = ratio(t.hits ?? 0, t.misses ?? 0);
  if (docs.some((d) => 'namespaces' in d)) out.namespaces = ns;
  return out;
}

// ------------------------------------------------------------------ module mode
export class ModuleBackend implements Backend {
  readonly mode = 'module' as const;
  constructor(
    private readonly driver: Driver,
    private readonly exec: Exec,
  ) {}

  getOrMark<R = Mark>(
    key: string,
    leaseMs: number | undefined,
    early?: number,
    tenant?: string,
    then?: (m: Mark) => R | Promise<R>,
    recover?: (e: unknown) => R | Promise<R>,
  ): Promise<R> {
    // Without a lease length the server's tagcache.lease-ms applies (and the hot path is 2 args shorter).
    const args: Arg[] = leaseMs === undefined ? ['CACHE.GETORMARK', key] : ['CACHE.GETORMARK', key, 'LEASE', String(leaseMs)];
    if (early !== undefined && early > 0) args.push('EARLY', String(early));
    if (tenant) args.push('TENANT', tenant);
    const map = then ? (r: unknown) => then(parseMark(r)) : (parseMark as unknown as (r: unknown) => R);
    return this.exec(() => this.driver.send(args, key), map, recover);
  }

  async waitMark(key: string, leaseMs: number | undefined, waitMs: number, conn: Driver | undefined, tenant?: string): Promise<Mark> {
    if (!conn) throw new Error('no waiting connection');
    // Never retried: a blocking command must not be re-sent silently (S4.2).
    const args: Arg[] = ['CACHE.GETORMARK', key];
    if (leaseMs !== undefined) args.push('LEASE', String(leaseMs));
    if (tenant) args.push('TENANT', tenant);
    args.push('WAIT', String(waitMs));
    const r = await conn.send(args, key);
    return parseMark(r);
  }

  async fill(key: string, token: Buffer, value: Buffer, w: WriteOpts): Promise<boolean> {
    try {
      await this.exec(() => this.driver.send(['CACHE.FILL', key, token, value, ...writeArgs(w)], key));
      return true;
    } catch (e) {
      if (isLeaseError(e)) return false;
      throw e;
    }
  }

  async abandon(key: string, token: Buffer): Promise<boolean> {
    const r = await this.exec(() => this.driver.send(['CACHE.ABANDON', key, token], key));
    return Number(r) === 1;
  }

  async get(key: string, tenant?: string): Promise<Buffer | null> {
    const r = await this.exec(() => this.driver.send(tenant ? ['CACHE.GET', key, 'TENANT', tenant] : ['CACHE.GET', key], key));
    return r == null ? null : Buffer.isBuffer(r) ? r : Buffer.from(String(r));
  }

  async set(key: string, value: Buffer, w: WriteOpts): Promise<void> {
    await this.exec(() => this.driver.send(['CACHE.SET', key, value, ...writeArgs(w)], key));
  }

  async del(keys: string[]): Promise<number> {
    if (keys.length === 0) return 0;
    if (!this.driver.cluster) return Number(await this.exec(() => this.driver.send(['CACHE.DEL', ...keys], keys[0])));
    const rs = await Promise.all(keys.map((k) => this.exec(() => this.driver.send(['CACHE.DEL', k], k))));
    return sum(rs);
  }

  async invalidate(tenant: string, pattern: string, soft: boolean): Promise<number> {
    const args: Arg[] = ['CACHE.INVALIDATE', tenant, pattern];
    if (soft) args.push('SOFT');
    if (tenant === '*' && this.driver.cluster) return sum(await this.exec(() => this.driver.sendToPrimaries(args)));
    // The tenant is the command's key: `{t}` routes to the tenant's shard.
    return Number(await this.exec(() => this.driver.send(args, tenant === '' ? undefined : `{${tenant}}`)));
  }

  async invalidateTags(tags: readonly string[], soft: boolean): Promise<number> {
    if (tags.length === 0) return 0;
    const args: Arg[] = ['CACHE.INVALIDATETAGS', String(tags.length), ...tags];
    if (soft) args.push('SOFT');
    return sum(await this.exec(() => this.driver.sendToPrimaries(args)));
  }

  async freshMs(key: string): Promise<number> {
    const r = await this.exec(() => this.driver.send(['CACHE.INSPECT', key], key));
    if (r == null) return 0;
    const doc = JSON.parse(str(r)) as { exists?: boolean; fresh_ms?: number | null; ttl_ms?: number };
    if (!doc.exists) return 0;
    if (doc.fresh_ms == null) return doc.ttl_ms === -1 ? Number.POSITIVE_INFINITY : 0;
    return Math.max(0, doc.fresh_ms);
  }

  async stats(tenant: string | undefined): Promise<StatsDoc> {
    // Counters are per server, and a tenant given explicitly (TENANT t) may own keys on several
    // shards: ask every primary and merge, with or without a tenant.
    const args: Arg[] = tenant !== undefined && tenant !== '*' ? ['CACHE.STATS', 'TENANT', tenant] : ['CACHE.STATS'];
    const rs = await this.exec(() => this.driver.sendToPrimaries(args));
    return mergeStats(rs.map((r) => JSON.parse(str(r)) as StatsDoc));
  }
}

// ------------------------------------------------------------------ fallback mode
// Value layout: 0xTC magic (0x54 0x43), fresh-until ms (float64 BE, +Inf = never stale),
// grace ms (float64 BE), tenant length (uint16 BE), tenant, payload.
const MAGIC0 = 0x54;
const MAGIC1 = 0x43;
export const FALLBACK_NS = '__tagcache:';
const POLL_MS = 50;
const FALLBACK_LEASE_MS = 5_000; // the module's default tagcache.lease-ms

interface Decoded {
  freshUntil: number;
  graceMs: number;
  tenant: string;
  payload: Buffer;
}

function encodeFallback(payload: Buffer, freshUntil: number, graceMs: number, tenant: string): Buffer {
  const t = Buffer.from(tenant);
  const h = Buffer.allocUnsafe(2 + 8 + 8 + 2);
  h[0] = MAGIC0;
  h[1] = MAGIC1;
  h.writeDoubleBE(freshUntil, 2);
  h.writeDoubleBE(graceMs, 10);
  h.writeUInt16BE(t.length, 18);
  return Buffer.concat([h, t, payload]);
}

function decodeFallback(b: Buffer): Decoded | null {
  if (b.length < 20 || b[0] !== MAGIC0 || b[1] !== MAGIC1) return null;
  const tl = b.readUInt16BE(18);
  if (b.length < 20 + tl) return null;
  return {
    freshUntil: b.readDoubleBE(2),
    graceMs: b.readDoubleBE(10),
    tenant: b.toString('utf8', 20, 20 + tl),
    payload: b.subarray(20 + tl),
  };
}

function hashTag(key: string): string {
  const i = key.indexOf('{');
  if (i < 0) return '';
  const j = key.indexOf('}', i + 1);
  return j > i + 1 ? key.slice(i + 1, j) : '';
}

const asBuf = (r: unknown): Buffer | null => (r == null ? null : Buffer.isBuffer(r) ? r : Buffer.from(String(r)));

export class FallbackBackend implements Backend {
  readonly mode = 'fallback' as const;
  constructor(
    private readonly driver: Driver,
    private readonly exec: Exec,
    private readonly defaultTtlMs: number,
  ) {}

  private send(args: Arg[], key?: Arg): Promise<unknown> {
    return this.exec(() => this.driver.send(args, key));
  }
  private lockKey(key: string): string {
    return `${FALLBACK_NS}lock:${key}`;
  }
  private tagKey(tag: string): string {
    return `${FALLBACK_NS}tag:${tag}`;
  }

  private async tryLock(key: string, leaseMs = FALLBACK_LEASE_MS): Promise<Buffer | null> {
    const token = randomBytes(12).toString('hex');
    const ok = await this.send(['SET', this.lockKey(key), token, 'NX', 'PX', String(leaseMs)], this.lockKey(key));
    return ok == null ? null : Buffer.from(token);
  }

  getOrMark<R = Mark>(
    key: string,
    leaseMs: number | undefined,
    _early?: number,
    _tenant?: string,
    then?: (m: Mark) => R | Promise<R>,
    recover?: (e: unknown) => R | Promise<R>,
  ): Promise<R> {
    const p = this.mark(key, leaseMs);
    if (!then) return p as unknown as Promise<R>;
    return p.then(then, recover);
  }

  private async mark(key: string, leaseMs: number | undefined): Promise<Mark> {
    const raw = asBuf(await this.send(['GET', key], key));
    const d = raw ? decodeFallback(raw) : null;
    if (d && Date.now() < d.freshUntil) return { kind: 'HIT', value: d.payload };
    const token = await this.tryLock(key, leaseMs);
    if (d) return { kind: 'STALE', value: d.payload, token: token ?? undefined };
    if (token) {
      // The GET-miss-then-lock race: a filler may have finished in between.
      const again = asBuf(await this.send(['GET', key], key));
      const d2 = again ? decodeFallback(again) : null;
      if (d2 && Date.now() < d2.freshUntil) {
        await this.abandon(key, token);
        return { kind: 'HIT', value: d2.payload };
      }
      return { kind: 'MISS', token };
    }
    const pttl = Number(await this.send(['PTTL', this.lockKey(key)], this.lockKey(key)));
    return { kind: 'BUSY', ms: Math.min(1000, Math.max(1, pttl > 0 ? pttl : 1)) };
  }

  async waitMark(key: string, leaseMs: number | undefined, waitMs: number): Promise<Mark> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const m = await this.mark(key, leaseMs);
      const left = deadline - Date.now();
      if (m.kind !== 'BUSY' || left <= 0) return m;
      await new Promise((r) => setTimeout(r, Math.min(POLL_MS, left)));
    }
  }

  private async store(key: string, value: Buffer, w: WriteOpts): Promise<void> {
    const ttlMs = w.ttlMs ?? this.defaultTtlMs;
    const graceMs = (w.graceS ?? 0) * 1000;
    const now = Date.now();
    const freshUntil = ttlMs > 0 ? now + ttlMs : Number.POSITIVE_INFINITY;
    const tenant = w.tenant ?? hashTag(key);
    const args: Arg[] = ['SET', key, encodeFallback(value, freshUntil, graceMs, tenant)];
    if (ttlMs > 0) args.push('PX', String(Math.max(1, Math.round(ttlMs + graceMs))));
    await this.send(args, key);
    for (const t of w.tags ?? []) await this.send(['SADD', this.tagKey(t), key], this.tagKey(t));
  }

  async fill(key: string, token: Buffer, value: Buffer, w: WriteOpts): Promise<boolean> {
    const cur = asBuf(await this.send(['GET', this.lockKey(key)], this.lockKey(key)));
    if (!cur || !cur.equals(token)) return false;
    await this.store(key, value, w);
    await this.abandon(key, token);
    return true;
  }

  async abandon(key: string, token: Buffer): Promise<boolean> {
    const lk = this.lockKey(key);
    const cur = asBuf(await this.send(['GET', lk], lk));
    if (!cur || !cur.equals(token)) return false;
    return Number(await this.send(['DEL', lk], lk)) === 1;
  }

  async get(key: string): Promise<Buffer | null> {
    const raw = asBuf(await this.send(['GET', key], key));
    const d = raw ? decodeFallback(raw) : null;
    return d && Date.now() < d.freshUntil ? d.payload : null;
  }

  async set(key: string, value: Buffer, w: WriteOpts): Promise<void> {
    await this.store(key, value, w);
    await this.send(['DEL', this.lockKey(key)], this.lockKey(key)); // a SET voids the lease
  }

  async del(keys: string[]): Promise<number> {
    let n = 0;
    for (const k of keys) {
      n += Number(await this.send(['UNLINK', k], k));
      await this.send(['DEL', this.lockKey(k)], this.lockKey(k));
    }
    return n;
  }

  /** Delete (or mark stale) one entry; returns 1 when it was an entry. */
  private async drop(key: string, soft: boolean, tenant?: string): Promise<number> {
    const raw = asBuf(await this.send(['GET', key], key));
    const d = raw ? decodeFallback(raw) : null;
    if (!d) return 0;
    if (tenant !== undefined && tenant !== '*' && d.tenant !== tenant) return 0;
    await this.send(['DEL', this.lockKey(key)], this.lockKey(key));
    if (soft && d.graceMs > 0) {
      const pttl = Number(await this.send(['PTTL', key], key));
      const ms = pttl > 0 ? Math.min(pttl, d.graceMs) : d.graceMs;
      await this.send(['SET', key, encodeFallback(d.payload, 0, d.graceMs, d.tenant), 'PX', String(Math.max(1, Math.round(ms)))], key);
      return 1;
    }
    return Number(await this.send(['UNLINK', key], key)) > 0 ? 1 : 0;
  }

  async invalidate(tenant: string, pattern: string, soft: boolean): Promise<number> {
    // SCAN every primary (a cluster node only scans its own slots); drop() routes by key.
    const counts = await this.driver.eachPrimary(async (send) => {
      let cursor = '0';
      let n = 0;
      do {
        const r = (await this.exec(() => send(['SCAN', cursor, 'MATCH', pattern, 'COUNT', '1000']))) as unknown[];
        cursor = str(r[0]);
        for (const k of r[1] as unknown[]) {
          const key = str(k);
          if (key.startsWith(FALLBACK_NS)) continue;
          n += await this.drop(key, soft, tenant);
        }
      } while (cursor !== '0');
      return n;
    });
    return sum(counts);
  }

  async invalidateTags(tags: readonly string[], soft: boolean): Promise<number> {
    const seen = new Set<string>();
    let n = 0;
    for (const t of tags) {
      const members = (await this.send(['SMEMBERS', this.tagKey(t)], this.tagKey(t))) as unknown[];
      for (const m of members) {
        const key = str(m);
        if (seen.has(key)) continue;
        seen.add(key);
        n += await this.drop(key, soft);
      }
      await this.send(['DEL', this.tagKey(t)], this.tagKey(t));
    }
    return n;
  }

  async freshMs(key: string): Promise<number> {
    const raw = asBuf(await this.send(['GET', key], key));
    const d = raw ? decodeFallback(raw) : null;
    return d ? Math.max(0, d.freshUntil - Date.now()) : 0;
  }

  async stats(): Promise<null> {
    return null; // no server-side statistics without the module
  }
}
