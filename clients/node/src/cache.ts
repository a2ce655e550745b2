import { EventEmitter } from 'node:events';
import {
  type Backend,
  type Exec,
  type Mark,
  type StatsDoc,
  type WriteOpts,
  FallbackBackend,
  ModuleBackend,
  errorText,
  str,
} from './backend.js';
import { CircuitBreaker, type CircuitState } from './breaker.js';
import { type Driver, driverFor, driverFromUrl, withTimeout } from './driver.js';
import { L1Cache } from './l1.js';
import { renderPrometheus } from './prometheus.js';
import { jsonSerializer, type Serializer } from './serializer.js';
import { Tracker } from './tracking.js';

export interface Logger {
  debug?(msg: string, meta?: Record<string, unknown>): void;
  info?(msg: string, meta?: Record<string, unknown>): void;
  warn?(msg: string, meta?: Record<string, unknown>): void;
  error?(msg: string, meta?: Record<string, unknown>): void;
}

export interface CacheOptions {
  /** A URL (`redis://…`), an ioredis Redis or Cluster, or a node-redis client or cluster. */
  redis: unknown;
  /** `auto` (default): detect the module at connect; `module`; `fallback` (userland, no module). */
  mode?: 'auto' | 'module' | 'fallback';
  /** Prepended to every key (and to invalidation patterns). */
  prefix?: string;
  /** Default tenant (sent as `TENANT t`; the default scope of `invalidate`). */
  tenant?: string;
  /** Fresh time in seconds (float allowed); 0 = no expiry; unset = the server's ttl-rules. */
  ttl?: number;
  /** Stale window in seconds; unset = the server's rules. */
  grace?: number;
  /** Soft timeout (ms) default for getOrSet. */
  timeout?: number;
  /** Hard timeout (ms) default for getOrSet. */
  hardTimeout?: number;
  /** Serve the last known value when the factory fails (default false). */
  failSafe?: boolean;
  /**
   * Early refresh (XFetch) beta sent as `GETORMARK … EARLY beta`: while still fresh, a caller may
   * be handed the value plus a refresh lease with probability exp(−fresh left / (beta · last fill
   * time)). 1 is the textbook value; unset = no early refresh.
   */
  early?: number;
  /** Lease length (ms) sent as `GETORMARK … LEASE ms`; unset = the server's `tagcache.lease-ms` (fallback: 5 000). */
  leaseMs?: number;
  /** Longest a getOrSet waits for another filler before calling the factory uncached (ms, default 10 000). */
  waitTimeout?: number;
  /** One parked WAIT's length (ms, default 2 000). */
  maxWait?: number;
  /** Dedicated connections for parked waits (default 8). */
  waitPoolSize?: number;
  /** Timeout of every non-blocking command (ms, default 1 000; 0 = rely on the client library's own timeouts). */
  commandTimeout?: number;
  /** How long connecting may take before the cache works without Redis (ms, default 5 000). */
  connectTimeout?: number;
  /** In-process LRU in front of Redis, kept coherent by CLIENT TRACKING. */
  l1?: false | { maxEntries?: number; ttl?: number };
  serializer?: Serializer;
  logger?: Logger;
  retry?: { retries?: number; baseDelay?: number; maxDelay?: number };
  circuitBreaker?: false | { threshold?: number; cooldown?: number };
  /** Fallback mode: fresh time (s) when neither the call nor the cache gives a ttl (default 300). */
  fallbackDefaultTtl?: number;
}

export interface FactoryContext<T> {
  /** The stale value being refreshed, if any. */
  readonly stale: T | undefined;
  /** Return the value without storing it. */
  skip(): void;
  setTtl(seconds: number): void;
  setTags(tags: string[]): void;
}

export interface GetOrSetOptions<T> {
  key: string;
  factory: (ctx: FactoryContext<T>) => Promise<T> | T;
  ttl?: number;
  grace?: number;
  tags?: string[];
  tenant?: string;
  timeout?: number;
  hardTimeout?: number;
  failSafe?: boolean;
  /** Early refresh beta for this call (see CacheOptions.early). */
  early?: number;
}

export interface SetOptions {
  ttl?: number;
  grace?: number;
  tags?: string[];
  tenant?: string;
}

export interface Metrics {
  hits: number;
  misses: number;
  stale: number;
  l1_hits: number;
  factory_calls: number;
  factory_errors: number;
  factory_latency: { count: number; sum_ms: number; max_ms: number };
  fills: number;
  fills_rejected: number;
  fail_open: number;
  errors: number;
  retries: number;
  circuit: CircuitState;
  mode: 'module' | 'fallback' | 'connecting';
  wait_connections: number;
}

export class TimeoutError extends Error {
  constructor(ms: number) {
    super(`tagcache: factory exceeded its hard timeout of ${ms} ms`);
    this.name = 'TimeoutError';
  }
}

class CircuitOpenError extends Error {
  constructor() {
    super('tagcache: circuit open');
    this.name = 'CircuitOpenError';
  }
}

const TRANSIENT_REPLY = /^(LOADING|TRYAGAIN|CLUSTERDOWN|MASTERDOWN|BUSY )/;

/** A reply error the server sent (not a connection or timeout problem). */
function isServerReply(e: unknown): boolean {
  const name = (e as { name?: string } | null)?.name ?? '';
  const msg = errorText(e);
  if (TRANSIENT_REPLY.test(msg)) return false;
  if (name === 'ReplyError' || name === 'ErrorReply' || name === 'SimpleError' || name === 'BlobError') return true;
  return /^[A-Z][A-Z_]+ /.test(msg) && !/^(ERR_|EPIPE|ECONN)/.test(msg);
}

/** Exponential backoff with full jitter: uniform in [0, min(maxDelay, baseDelay·2^attempt)). */
export function backoffDelay(attempt: number, baseDelay: number, maxDelay: number, rnd: () => number = Math.random): number {
  return rnd() * Math.min(maxDelay, baseDelay * 2 ** attempt);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}


/**
 * Command timeouts without one timer per command. Every command has the same timeout, so deadlines
 * arrive in order: a FIFO queue that one unref'd interval sweeps from the head (resolution: a
 * tenth of the timeout, at least 5 ms). Settled entries are only flagged, never searched for.
 */
/**
 * The per-command timeout. One timer per command: Node's timer lists make arming and clearing
 * O(1), and a cleared Timeout dies young — a queue of pending entries swept later kept every
 * command's closures alive past the young generation and made GC the hot path's main cost.
 */
class Deadlines {
  constructor(private readonly ms: number) {}

  /**
   * Settles with `map(value of p)`, or with `onError(error)` when `p` fails or the timeout passes.
   * One promise per command (the hit path's cost is mostly promises).
   */
  run<T, R>(p: Promise<T>, map: (v: T) => R | Promise<R>, onError: (e: unknown) => Promise<R>): Promise<R> {
    if (this.ms <= 0) return p.then(map, onError); // commandTimeout 0: the client library's own timeouts only
    return new Promise<R>((resolve, reject) => {
      let done = false;
      const timer = setTimeout(() => {
        if (done) return;
        done = true;
        resolve(onError(new Error(`Redis command timed out after ${this.ms} ms`)));
      }, this.ms);
      p.then(
        (v) => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          try {
            resolve(map(v));
          } catch (err) {
            reject(err);
          }
        },
        (err: unknown) => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          resolve(onError(err));
        },
      );
    });
  }
}

/** Bounded pool of dedicated connections for parked GETORMARK … WAIT calls. */
class WaitPool {
  private idle: Driver[] = [];
  private total = 0;
  private queue: { resolve: (d: Driver | null) => void; timer: NodeJS.Timeout }[] = [];
  private closed = false;

  constructor(
    private readonly make: () => Promise<Driver>,
    private readonly max: number,
  ) {}

  get size(): number {
    return this.total;
  }

  /** A free connection within `timeoutMs`, or null (all busy, or cannot connect). */
  async acquire(timeoutMs: number): Promise<Driver | null> {
    if (this.closed) return null;
    for (let d = this.idle.pop(); d; d = this.idle.pop()) {
      if (d.isReady()) return d;
      this.total--; // died while idle (server restart): drop it
      void d.close();
    }
    if (this.total < this.max) {
      this.total++;
      try {
        return await this.make();
      } catch {
        this.total--;
        return null;
      }
    }
    if (timeoutMs <= 0) return null;
    return new Promise((resolve) => {
      const entry = {
        resolve,
        timer: setTimeout(() => {
          this.queue = this.queue.filter((q) => q !== entry);
          resolve(null);
        }, timeoutMs),
      };
      this.queue.push(entry);
    });
  }

  release(d: Driver, healthy: boolean): void {
    if (!healthy || this.closed) {
      this.total--;
      void d.close();
      // a slot is free: let a queued caller create a new connection
      const q = this.queue.shift();
      if (q) {
        clearTimeout(q.timer);
        void this.acquire(0).then(q.resolve);
      }
      return;
    }
    const q = this.queue.shift();
    if (q) {
      clearTimeout(q.timer);
      q.resolve(d);
    } else this.idle.push(d);
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const q of this.queue.splice(0)) {
      clearTimeout(q.timer);
      q.resolve(null);
    }
    await Promise.all(this.idle.splice(0).map((d) => d.close()));
  }
}

const noop = (): void => {};
const defaultLogger: Logger = {
  warn: (m) => console.warn(`[tagcache] ${m}`),
  error: (m) => console.error(`[tagcache] ${m}`),
};

export const FALLBACK_WARNING =
  'tagcache module not found on the server: fallback mode. Lost guarantees: no parked waiters ' +
  '(lock + 50 ms polling), no fenced fills (a fill may land after an invalidation), no exact tag ' +
  'index (tag sets may keep names of expired keys), invalidation by pattern is O(keyspace) SCAN, ' +
  'no server-side statistics.';

export class TagCache extends EventEmitter {
  private driver: Driver | undefined;
  private backend: Backend | undefined;
  private readonly ready: Promise<void>;
  private readonly inflight = new Map<string, Promise<unknown>>();
  private readonly breaker: CircuitBreaker;
  private readonly l1: L1Cache | undefined;
  private tracker: Tracker | undefined;
  private invalidationSeq = 0;
  private trackerDown = false;
  private pool: WaitPool | undefined;
  private readonly deadlines: Deadlines;
  private initialized = false;
  private readonly background = new Set<Promise<unknown>>();
  private closed = false;

  private readonly prefix: string;
  private readonly tenant: string | undefined;
  private readonly serializer: Serializer;
  private readonly log: Required<Logger>;
  private readonly debugOn: boolean;
  private readonly o: {
    ttl: number | undefined;
    grace: number | undefined;
    timeout: number | undefined;
    hardTimeout: number | undefined;
    failSafe: boolean;
    leaseMs: number | undefined;
    early: number | undefined;
    waitTimeout: number;
    maxWait: number;
    waitPoolSize: number;
    commandTimeout: number;
    connectTimeout: number;
    retries: number;
    baseDelay: number;
    maxDelay: number;
    l1Ttl: number;
    fallbackTtlMs: number;
  };
  private readonly m: Metrics = {
    hits: 0,
    misses: 0,
    stale: 0,
    l1_hits: 0,
    factory_calls: 0,
    factory_errors: 0,
    factory_latency: { count: 0, sum_ms: 0, max_ms: 0 },
    fills: 0,
    fills_rejected: 0,
    fail_open: 0,
    errors: 0,
    retries: 0,
    circuit: 'closed',
    mode: 'connecting',
    wait_connections: 0,
  };

  constructor(private readonly options: CacheOptions) {
    super();
    const lg = options.logger ?? defaultLogger;
    this.log = {
      debug: lg.debug?.bind(lg) ?? noop,
      info: lg.info?.bind(lg) ?? noop,
      warn: lg.warn?.bind(lg) ?? noop,
      error: lg.error?.bind(lg) ?? noop,
    };
    this.debugOn = typeof lg.debug === 'function';
    this.prefix = options.prefix ?? '';
    this.tenant = options.tenant;
    this.serializer = options.serializer ?? jsonSerializer;
    const cb = options.circuitBreaker === false ? { threshold: 0 } : (options.circuitBreaker ?? {});
    this.o = {
      ttl: options.ttl,
      grace: options.grace,
      timeout: options.timeout,
      hardTimeout: options.hardTimeout,
      failSafe: options.failSafe ?? false,
      leaseMs: options.leaseMs,
      early: options.early,
      waitTimeout: options.waitTimeout ?? 10_000,
      maxWait: options.maxWait ?? 2_000,
      waitPoolSize: options.waitPoolSize ?? 8,
      commandTimeout: options.commandTimeout ?? 1_000,
      connectTimeout: options.connectTimeout ?? 5_000,
      retries: options.retry?.retries ?? 2,
      baseDelay: options.retry?.baseDelay ?? 50,
      maxDelay: options.retry?.maxDelay ?? 1_000,
      l1Ttl: (options.l1 ? (options.l1.ttl ?? 5) : 0) * 1000,
      fallbackTtlMs: (options.fallbackDefaultTtl ?? 300) * 1000,
    };
    this.breaker = new CircuitBreaker(
      'threshold' in cb && cb.threshold !== undefined ? cb.threshold : 5,
      ('cooldown' in cb ? cb.cooldown : undefined) ?? 2_000,
      () => this.probe(),
      (s) => {
        this.m.circuit = s;
        if (s === 'open') {
          this.log.warn('circuit open: Redis calls skipped until a probe succeeds');
          this.emit('circuit_open');
        } else {
          this.log.info('circuit closed: Redis reachable again');
          this.emit('circuit_close');
        }
      },
    );
    this.deadlines = new Deadlines(this.o.commandTimeout);
    if (options.l1) this.l1 = new L1Cache(options.l1.maxEntries ?? 10_000);
    this.ready = this.init()
      .catch((e: unknown) => {
        this.log.error(`connect failed: ${errorText(e)}`);
      })
      .finally(() => {
        this.initialized = true;
      });
  }

  // ------------------------------------------------------------ connection
  private async init(): Promise<void> {
    const r = this.options.redis;
    this.driver = typeof r === 'string' ? await driverFromUrl(r) : driverFor(r);
    const driver = this.driver;
    const exec: Exec = (fn, map, recover) => this.exec(fn, map, recover);
    try {
      await driver.connect(this.o.connectTimeout);
    } catch (e) {
      this.log.error(`cannot connect to Redis: ${errorText(e)}`);
      this.breaker.failure();
    }
    let mode = this.options.mode ?? 'auto';
    if (mode === 'auto') {
      mode = 'module';
      for (let attempt = 0; ; attempt++) {
        try {
          const info = await this.exec(() => driver.send(['COMMAND', 'INFO', 'cache.getormark']));
          const present = Array.isArray(info) && info.length > 0 && info[0] != null;
          mode = present ? 'module' : 'fallback';
          break;
        } catch (e) {
          if (attempt >= 2) {
            this.log.warn(`cannot detect the tagcache module (${errorText(e)}); assuming it is loaded`);
            break;
          }
          await sleep(this.o.baseDelay * 2 ** attempt);
        }
      }
    }
    if (mode === 'fallback') {
      this.useFallback();
    } else {
      this.backend = new ModuleBackend(driver, exec);
      this.pool = new WaitPool(async () => {
        const d = await driver.duplicateForWaiting(this.o.maxWait + 1_000);
        this.m.wait_connections++;
        const close = d.close.bind(d);
        d.close = async () => {
          this.m.wait_connections--;
          await close();
        };
        return d;
      }, this.o.waitPoolSize);
    }
    if (this.backend) this.m.mode = this.backend.mode;
    if (this.l1) {
      this.tracker = new Tracker(
        () => driver.primaries(),
        this.prefix,
        (keys) => this.onInvalidatePush(keys),
        (up, err) => {
          // one line per outage, not one per reconnect attempt
          if (up) {
            if (this.trackerDown) this.log.info('L1 tracking connected again');
            this.trackerDown = false;
          } else if (!this.trackerDown) {
            this.trackerDown = true;
            this.log.warn(`L1 tracking connection lost${err ? `: ${errorText(err)}` : ''}; L1 bypassed until it is back`);
          }
        },
      );
      try {
        await withTimeout(this.tracker.start(), this.o.connectTimeout, 'CLIENT TRACKING');
      } catch (e) {
        this.log.warn(`L1 disabled until tracking connects: ${errorText(e)}`);
      }
    }
  }

  private useFallback(): void {
    if (!this.driver || this.backend?.mode === 'fallback') return;
    this.log.warn(FALLBACK_WARNING);
    const exec: Exec = (fn, map, recover) => this.exec(fn, map, recover);
    this.backend = new FallbackBackend(this.driver, exec, this.o.fallbackTtlMs);
    this.m.mode = 'fallback';
    void this.pool?.close();
    this.pool = undefined;
  }

  private onInvalidatePush(keys: string[] | null): void {
    this.invalidationSeq++;
    if (!this.l1) return;
    if (keys === null) this.l1.clear();
    else for (const k of keys) this.l1.delete(k);
  }

  /** Resolves once connected and the mode is known (commands wait for it anyway). */
  async connect(): Promise<this> {
    await this.ready;
    return this;
  }

  get mode(): 'module' | 'fallback' | 'connecting' {
    return this.m.mode;
  }

  private async probe(): Promise<void> {
    const d = this.driver;
    if (!d) throw new Error('not connected');
    if (!d.isReady()) throw new Error('not connected');
    await withTimeout(d.send(['PING']), this.o.commandTimeout, 'PING');
  }

  /**
   * Timeout, retries with exponential backoff and full jitter, circuit breaker; `map` turns the
   * reply into the result (a throw there is the caller's error, not a Redis failure).
   */
  private exec<T, R = T>(
    fn: () => Promise<T>,
    map?: (v: T) => R | Promise<R>,
    recover?: (e: unknown) => R | Promise<R>,
    attempt = 0,
  ): Promise<R> {
    // Not async on purpose: the hit path stays one promise deep.
    const refuse = (e: Error): Promise<R> => (recover ? Promise.resolve().then(() => recover(e)) : Promise.reject(e));
    if (!this.breaker.allow()) return refuse(new CircuitOpenError());
    if (this.driver && !this.driver.isReady()) {
      this.breaker.failure();
      return refuse(new Error('Redis connection is down'));
    }
    const breaker = this.breaker;
    return this.deadlines.run(
      fn(),
      (v: T): R | Promise<R> => {
        breaker.success();
        return map ? map(v) : (v as unknown as R);
      },
      async (e: unknown): Promise<R> => {
        if (isServerReply(e)) {
          breaker.success(); // the server answered
        } else if (attempt >= this.o.retries) {
          breaker.failure();
        } else {
          this.m.retries++;
          await sleep(backoffDelay(attempt, this.o.baseDelay, this.o.maxDelay));
          return this.exec(fn, map, recover, attempt + 1);
        }
        if (recover) return recover(e);
        throw e;
      },
    );
  }

  private async be(): Promise<Backend> {
    if (!this.initialized) await this.ready;
    if (!this.backend) throw new Error('tagcache is not connected');
    return this.backend;
  }

  private fail(op: string, e: unknown, key?: string): void {
    if (e instanceof CircuitOpenError) return; // skipped on purpose: reported once as circuit_open
    this.m.errors++;
    const msg = errorText(e);
    if (this.backend?.mode === 'module' && (this.options.mode ?? 'auto') === 'auto' && /unknown command .?cache\./i.test(msg)) {
      // detection was impossible at connect (server down) and the server has no module after all
      this.useFallback();
    }
    this.log.error(`${op} failed: ${msg}`, key ? { key } : undefined);
    if (this.listenerCount('error') > 0) this.emit('error', { op, key, error: e });
  }

  // ------------------------------------------------------------ helpers
  /** Emit an event (only when somebody listens) and log it at debug level (only with a debug logger). */
  private note(event: string, payload: Record<string, unknown>): void {
    if (this.debugOn) this.log.debug(`${event} ${JSON.stringify(payload, (_k, v: unknown) => (v instanceof Error ? v.message : v))}`);
    if (this.listenerCount(event) > 0) this.emit(event, payload);
  }

  private k(key: string): string {
    return this.prefix + key;
  }

  private encode(value: unknown): Buffer {
    const s = this.serializer.serialize(value);
    return typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
  }

  private decode(b: Buffer): unknown {
    return this.serializer.deserialize(b);
  }

  private writeOpts(o: { ttl?: number | undefined; grace?: number | undefined; tags?: readonly string[] | undefined; tenant?: string | undefined }): WriteOpts {
    const ttl = o.ttl ?? this.o.ttl;
    const grace = o.grace ?? this.o.grace;
    return {
      ttlMs: ttl === undefined ? undefined : ttl * 1000,
      graceS: grace,
      tags: o.tags,
      tenant: o.tenant ?? this.tenant,
    };
  }

  private l1Get(key: string): { value: unknown } | undefined {
    if (!this.l1 || !this.tracker?.healthy) return undefined;
    return this.l1.get(key);
  }

  /** Fresh time left on the server, asked in the same pipeline as the read when L1 is on. */
  private freshFor(be: Backend, key: string): Promise<number> | undefined {
    if (!this.l1 || !this.tracker?.healthy) return undefined;
    const p = be.freshMs(key);
    p.catch(noop);
    return p;
  }

  /** L1 entry TTL = min(l1.ttl, the Redis fresh time left). */
  private async l1Set(key: string, value: unknown, fresh: Promise<number> | undefined, seqAtRead: number): Promise<void> {
    if (!this.l1 || !fresh) return;
    let ms: number;
    try {
      ms = await fresh;
    } catch {
      return;
    }
    if (!this.tracker?.healthy) return;
    if (this.invalidationSeq !== seqAtRead) return; // an invalidation raced the read
    this.l1.set(key, value, Math.min(this.o.l1Ttl, ms));
  }

  private track<T>(p: Promise<T>): void {
    const q = p.catch(noop);
    this.background.add(q);
    void q.finally(() => this.background.delete(q));
  }

  // ------------------------------------------------------------ getOrSet
  getOrSet<T>(opts: GetOrSetOptions<T>): Promise<T> {
    const key = this.prefix + opts.key;
    const l1 = this.l1Get(key);
    if (l1) {
      this.m.hits++;
      this.m.l1_hits++;
      this.note('hit', { key, l1: true });
      return Promise.resolve(l1.value as T);
    }
    const running = this.inflight.get(key);
    if (running) return running as Promise<T>;
    // getOrSetRemote removes the entry when it settles (before its callers resume)
    const p = this.getOrSetRemote(key, opts);
    this.inflight.set(key, p);
    return p;
  }

  private getOrSetRemote<T>(key: string, opts: GetOrSetOptions<T>): Promise<T> {
    const be = this.backend;
    if (!this.initialized || !be) {
      return this.ready.then(() => {
        if (this.backend) return this.getOrSetRemote(key, opts);
        this.inflight.delete(key);
        return this.failOpen(key, opts, 'not connected');
      });
    }
    const seq = this.invalidationSeq;
    const fresh = this.freshFor(be, key);
    // Hot path (a HIT without L1) resolves in one `then`; everything else goes to `settle`.
    // One promise for the hot path (a HIT without L1): the reply is mapped inside the command's own
    // promise; anything else continues in `settle`, a Redis failure in `failOpen`.
    return be.getOrMark(
      key,
      this.o.leaseMs,
      opts.early ?? this.o.early,
      opts.tenant ?? this.tenant,
      (mark): T | Promise<T> => {
        if (mark.kind === 'HIT' && !fresh) {
          this.inflight.delete(key);
          this.m.hits++;
          this.note('hit', { key });
          return this.decode(mark.value) as T;
        }
        return this.settle(key, opts, mark, fresh, seq).then(
          (v) => {
            this.inflight.delete(key);
            return v;
          },
          (e: unknown) => {
            this.inflight.delete(key);
            throw e;
          },
        );
      },
      (e: unknown) => {
        this.inflight.delete(key);
        this.fail('getOrSet', e, key);
        return this.failOpen(key, opts, errorText(e));
      },
    );
  }

  private async settle<T>(key: string, opts: GetOrSetOptions<T>, first: Mark, fresh: Promise<number> | undefined, seq: number): Promise<T> {
    const be = this.backend as Backend;
    const hard = opts.hardTimeout ?? this.o.hardTimeout;
    const soft = opts.timeout ?? this.o.timeout;
    const deadline = Date.now() + (hard ?? soft ?? this.o.waitTimeout);
    let mark = first;
    for (;;) {
      switch (mark.kind) {
        case 'HIT': {
          this.m.hits++;
          this.note('hit', { key });
          const v = this.decode(mark.value) as T;
          if (fresh) await this.l1Set(key, v, fresh, seq);
          return v;
        }
        case 'STALE': {
          this.m.hits++;
          this.m.stale++;
          this.note('stale', { key, refreshing: mark.token !== undefined });
          const v = this.decode(mark.value) as T;
          if (!mark.token) return v;
          return this.produce(key, mark.token, opts, { value: v }, soft ?? 0, hard);
        }
        case 'MISS': {
          this.m.misses++;
          this.note('miss', { key });
          const last = this.l1?.peekStale(key) as { value: T } | undefined;
          return this.produce(key, mark.token, opts, last, soft, hard);
        }
        case 'BUSY': {
          const left = deadline - Date.now();
          if (left <= 0) return this.failOpen(key, opts, 'wait for another filler ran out');
          try {
            mark = await this.waitOnce(be, key, mark.ms, left, opts.tenant ?? this.tenant);
          } catch (e) {
            this.fail('getOrSet wait', e, key);
            return this.failOpen(key, opts, errorText(e));
          }
        }
      }
    }
  }

  /** One round of waiting after BUSY: a parked WAIT on a pool connection, else ask again later. */
  private async waitOnce(be: Backend, key: string, hintMs: number, leftMs: number, tenant: string | undefined): Promise<Mark> {
    if (be.mode === 'fallback') return be.waitMark(key, this.o.leaseMs, Math.min(leftMs, this.o.maxWait), undefined);
    if (!this.breaker.allow()) throw new CircuitOpenError();
    const conn = await this.pool?.acquire(Math.min(hintMs, leftMs));
    if (!conn) {
      // every waiting connection is busy: ask again without WAIT after the hint (S2.1)
      await sleep(Math.max(1, Math.min(hintMs, leftMs, 100)));
      return be.getOrMark(key, this.o.leaseMs, undefined, tenant);
    }
    const waitMs = Math.max(1, Math.min(leftMs, this.o.maxWait));
    let healthy = false;
    try {
      const m = await be.waitMark(key, this.o.leaseMs, waitMs, conn, tenant);
      healthy = true;
      this.breaker.success();
      return m;
    } catch (e) {
      if (isServerReply(e)) healthy = true;
      else this.breaker.failure();
      throw e;
    } finally {
      this.pool?.release(conn, healthy);
    }
  }

  /** Call the factory without touching the cache (Redis down, circuit open, waits ran out). */
  private async failOpen<T>(key: string, opts: GetOrSetOptions<T>, why: string): Promise<T> {
    this.m.fail_open++;
    this.log.debug(`getOrSet ${key}: calling the factory uncached (${why})`);
    const ctx = this.context<T>(undefined);
    return this.callFactory(opts, ctx.ctx);
  }

  private context<T>(stale: T | undefined): {
    ctx: FactoryContext<T>;
    state: { skip: boolean; ttl: number | undefined; tags: string[] | undefined };
  } {
    const state = { skip: false, ttl: undefined as number | undefined, tags: undefined as string[] | undefined };
    const ctx: FactoryContext<T> = {
      stale,
      skip: () => {
        state.skip = true;
      },
      setTtl: (s: number) => {
        state.ttl = s;
      },
      setTags: (t: string[]) => {
        state.tags = [...t];
      },
    };
    return { ctx, state };
  }

  private async callFactory<T>(opts: GetOrSetOptions<T>, ctx: FactoryContext<T>): Promise<T> {
    this.m.factory_calls++;
    const t0 = performance.now();
    try {
      return await opts.factory(ctx);
    } catch (e) {
      this.m.factory_errors++;
      throw e;
    } finally {
      const ms = performance.now() - t0;
      const l = this.m.factory_latency;
      l.count++;
      l.sum_ms += ms;
      if (ms > l.max_ms) l.max_ms = ms;
    }
  }

  /** We hold the lease: run the factory, FILL (or ABANDON), honour soft/hard timeouts and failSafe. */
  private produce<T>(
    key: string,
    token: Buffer,
    opts: GetOrSetOptions<T>,
    stale: { value: T } | undefined,
    softMs: number | undefined,
    hardMs: number | undefined,
  ): Promise<T> {
    const be = this.backend as Backend;
    const failSafe = opts.failSafe ?? this.o.failSafe;
    const { ctx, state } = this.context<T>(stale?.value);
    let hardTimedOut = false;
    const factoryP = this.callFactory(opts, ctx);
    // The fill runs whether or not the caller is still waiting (soft timeout).
    const filled: Promise<T> = factoryP.then(
      async (value) => {
        if (hardTimedOut) return value;
        if (state.skip) {
          await be.abandon(key, token).catch((e: unknown) => this.fail('abandon', e, key));
          return value;
        }
        const tags = state.tags ?? opts.tags;
        const w = this.writeOpts({ ttl: state.ttl ?? opts.ttl, grace: opts.grace, tags, tenant: opts.tenant });
        try {
          const ok = await be.fill(key, token, this.encode(value), w);
          this.l1?.delete(key);
          if (ok) {
            this.m.fills++;
            this.note('fill', { key });
          } else {
            this.m.fills_rejected++;
            this.note('fill_rejected', { key });
          }
        } catch (e) {
          this.fail('fill', e, key);
        }
        return value;
      },
      async (err: unknown) => {
        if (!hardTimedOut) await be.abandon(key, token).catch((e: unknown) => this.fail('abandon', e, key));
        throw err;
      },
    );
    this.track(filled);

    return new Promise<T>((resolve, reject) => {
      let done = false;
      const timers: NodeJS.Timeout[] = [];
      const finish = (f: () => void): void => {
        if (done) return;
        done = true;
        for (const t of timers) clearTimeout(t);
        f();
      };
      filled.then(
        (v) => finish(() => resolve(v)),
        (err: unknown) =>
          finish(() => {
            if (failSafe && stale) {
              this.log.warn(`factory for ${key} failed, serving the last known value: ${errorText(err)}`);
              resolve(stale.value);
            } else reject(err);
          }),
      );
      if (stale && softMs !== undefined) {
        if (softMs <= 0) {
          finish(() => resolve(stale.value));
        } else {
          timers.push(setTimeout(() => finish(() => resolve(stale.value)), softMs));
        }
      }
      if (hardMs !== undefined && hardMs > 0) {
        timers.push(
          setTimeout(() => {
            if (done) return;
            hardTimedOut = true;
            void be.abandon(key, token).catch((e: unknown) => this.fail('abandon', e, key));
            finish(() => {
              if (failSafe && stale) resolve(stale.value);
              else reject(new TimeoutError(hardMs));
            });
          }, hardMs),
        );
      }
    });
  }

  /** cache-manager style: `ttl` in milliseconds. */
  wrap<T>(key: string, fn: () => Promise<T> | T, ttlMs?: number): Promise<T> {
    return this.getOrSet<T>({ key, factory: () => fn(), ...(ttlMs !== undefined ? { ttl: ttlMs / 1000 } : {}) });
  }

  // ------------------------------------------------------------ plain operations
  async get<T = unknown>(key: string): Promise<T | undefined> {
    const k = this.k(key);
    const l1 = this.l1Get(k);
    if (l1) {
      this.m.hits++;
      this.m.l1_hits++;
      this.note('hit', { key: k, l1: true });
      return l1.value as T;
    }
    const seq = this.invalidationSeq;
    try {
      const be = await this.be();
      const fresh = this.freshFor(be, k);
      const b = await be.get(k, this.tenant);
      if (b === null) {
        this.m.misses++;
        this.note('miss', { key: k });
        return undefined;
      }
      this.m.hits++;
      this.note('hit', { key: k });
      const v = this.decode(b) as T;
      await this.l1Set(k, v, fresh, seq);
      return v;
    } catch (e) {
      this.fail('get', e, k);
      return undefined;
    }
  }

  async set(key: string, value: unknown, opts: SetOptions = {}): Promise<boolean> {
    const k = this.k(key);
    this.l1?.delete(k);
    try {
      const be = await this.be();
      await be.set(k, this.encode(value), this.writeOpts(opts));
      return true;
    } catch (e) {
      this.fail('set', e, k);
      return false;
    }
  }

  async delete(...keys: string[]): Promise<number> {
    const ks = keys.map((k) => this.k(k));
    for (const k of ks) this.l1?.delete(k);
    try {
      const be = await this.be();
      return await be.del(ks);
    } catch (e) {
      this.fail('delete', e);
      return 0;
    }
  }

  /** Glob `pattern` (Redis KEYS syntax) over the keys of `tenant` (default: the cache's tenant, else every tenant). */
  async invalidate(opts: { tenant?: string; pattern?: string; soft?: boolean } = {}): Promise<number> {
    const tenant = opts.tenant ?? this.tenant ?? '*';
    const pattern = escapeGlob(this.prefix) + (opts.pattern ?? '*');
    this.l1?.clear();
    try {
      const be = await this.be();
      const n = await be.invalidate(tenant, pattern, opts.soft ?? false);
      this.note('invalidate', { tenant, pattern, soft: opts.soft ?? false, count: n });
      return n;
    } catch (e) {
      this.fail('invalidate', e);
      return 0;
    }
  }

  async invalidateTags(tags: string[], opts: { soft?: boolean } = {}): Promise<number> {
    this.l1?.clear();
    try {
      const be = await this.be();
      const n = await be.invalidateTags(tags, opts.soft ?? false);
      this.note('invalidate', { tags, soft: opts.soft ?? false, count: n });
      return n;
    } catch (e) {
      this.fail('invalidateTags', e);
      return 0;
    }
  }

  /** The server's CACHE.STATS document (merged over primaries); null in fallback mode or on error. */
  async stats(opts: { tenant?: string } = {}): Promise<StatsDoc | null> {
    try {
      const be = await this.be();
      return await be.stats(opts.tenant);
    } catch (e) {
      this.fail('stats', e);
      return null;
    }
  }

  /** This process's counters. */
  metrics(): Metrics {
    return {
      ...this.m,
      factory_latency: { ...this.m.factory_latency },
      circuit: this.breaker.state,
    };
  }

  /** The server's statistics (global, per namespace, per tenant in `tenants`) as Prometheus text. */
  async prometheus(opts: { tenants?: string[] } = {}): Promise<string> {
    const global = await this.stats();
    const tenants = [...new Set([...(opts.tenants ?? []), ...(this.tenant ? [this.tenant] : [])])];
    const per: Record<string, StatsDoc> = {};
    for (const t of tenants) {
      const d = await this.stats({ tenant: t });
      if (d) per[t] = d;
    }
    return renderPrometheus(global, per, this.metrics());
  }

  /** Wait (at most 5 s) for background refreshes/fills, close the package's own connections. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.breaker.stop();
    // background refreshes get a bounded time to land their fills (a hung factory must not hang close)
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all([...this.background]),
      new Promise<void>((r) => {
        timer = setTimeout(r, Math.max(this.o.commandTimeout * 5, 5_000));
        timer.unref();
      }),
    ]);
    if (timer) clearTimeout(timer);
    await this.ready;
    this.tracker?.stop();
    await this.pool?.close();
    await this.driver?.close();
  }
}

function escapeGlob(s: string): string {
  return s.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
}

export function createCache(options: CacheOptions): TagCache {
  return new TagCache(options);
}

export { str };
