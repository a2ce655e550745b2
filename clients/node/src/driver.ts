// Adapters over the two client libraries. Everything the cache sends goes through `Driver.send`,
// which returns bulk strings as Buffers (binary-safe values) whatever the library.
import type { Endpoint } from './resp.js';

export type Arg = string | Buffer;

export interface Driver {
  readonly library: 'ioredis' | 'node-redis';
  readonly cluster: boolean;
  /** Send one command; `key` routes it in a cluster. Bulk replies come back as Buffers. */
  send(args: Arg[], key?: Arg, timeoutMs?: number): Promise<unknown>;
  /** Send one command to every primary (one element per primary; standalone: one). */
  sendToPrimaries(args: Arg[]): Promise<unknown[]>;
  /** Run `fn` once per primary with a sender bound to that primary (SCAN needs a node's cursor). */
  eachPrimary<T>(fn: (send: (args: Arg[]) => Promise<unknown>) => Promise<T>): Promise<T[]>;
  /** false once the connection is known to be down (after it had been up). */
  isReady(): boolean;
  /** Connect a lazy client / wait until it is ready. */
  connect(timeoutMs: number): Promise<void>;
  /** A new connection (or cluster client) of the same kind, for parked waits only. */
  duplicateForWaiting(commandTimeoutMs: number): Promise<Driver>;
  /** Address of every primary (for the L1 tracking connections). */
  primaries(): Promise<Endpoint[]>;
  /** Close what this driver owns (duplicates, clients created from a URL). */
  close(): Promise<void>;
}

type AnyFn = (...a: any[]) => any;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Loose = any;

const BLOB_STRING = 36; // RESP_TYPES.BLOB_STRING ('$') in node-redis
const BUFFER_MAPPING = { [BLOB_STRING]: Buffer };

/** `p`, or a rejection once `ms` pass (no timeout for 0 or undefined). */
export function withTimeout<T>(p: Promise<T>, ms: number | undefined, what: string): Promise<T> {
  if (!ms || ms <= 0) return p;
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}

export function isIoredis(c: Loose): boolean {
  return c !== null && typeof c === 'object' && typeof c.callBuffer === 'function';
}
export function isNodeRedis(c: Loose): boolean {
  return (
    c !== null &&
    typeof c === 'object' &&
    typeof c.sendCommand === 'function' &&
    typeof c.duplicate === 'function' &&
    !isIoredis(c)
  );
}

function authOf(opts: Loose): Pick<Endpoint, 'username' | 'password' | 'tls'> {
  return {
    username: opts?.username || undefined,
    password: opts?.password || undefined,
    tls: opts?.tls || undefined,
  };
}

// ---------------------------------------------------------------- ioredis
export class IoredisDriver implements Driver {
  readonly library = 'ioredis' as const;
  readonly cluster: boolean;
  private everReady = false;
  private corked = false;

  constructor(
    private readonly client: Loose,
    private readonly owned: boolean,
  ) {
    this.cluster = client.isCluster === true;
    if (client.status === 'ready') this.everReady = true;
    client.on?.('ready', () => {
      this.everReady = true;
    });
  }

  send(args: Arg[], _key?: Arg): Promise<unknown> {
    this.coalesceWrites();
    return (this.client.callBuffer as AnyFn).apply(this.client, args as unknown[]) as Promise<unknown>;
  }

  /**
   * ioredis writes every command to the socket at once: one syscall per command, most of a
   * cached read's client CPU. Corking the socket until the end of the tick turns the commands
   * of one tick into one `writev` (what node-redis does by itself). Order is unchanged and
   * nothing waits past the current tick. Standalone only: a cluster client has no one socket.
   */
  private coalesceWrites(): void {
    if (this.corked || this.cluster) return;
    const socket = this.client.stream as { cork?: () => void; uncork?: () => void; writable?: boolean } | undefined;
    if (!socket?.writable || typeof socket.cork !== 'function') return;
    this.corked = true;
    socket.cork();
    process.nextTick(() => {
      this.corked = false;
      socket.uncork?.();
    });
  }

  async sendToPrimaries(args: Arg[]): Promise<unknown[]> {
    if (!this.cluster) return [await this.send(args)];
    const nodes: Loose[] = this.client.nodes('master');
    return Promise.all(nodes.map((n) => (n.callBuffer as AnyFn).apply(n, args as unknown[]) as Promise<unknown>));
  }

  eachPrimary<T>(fn: (send: (args: Arg[]) => Promise<unknown>) => Promise<T>): Promise<T[]> {
    if (!this.cluster) return Promise.all([fn((args) => this.send(args))]);
    const nodes: Loose[] = this.client.nodes('master');
    return Promise.all(nodes.map((n) => fn((args) => (n.callBuffer as AnyFn).apply(n, args as unknown[]) as Promise<unknown>)));
  }

  isReady(): boolean {
    return !this.everReady || this.client.status === 'ready';
  }

  async connect(timeoutMs: number): Promise<void> {
    const c = this.client;
    if (c.status === 'ready') {
      this.everReady = true;
      return;
    }
    if (c.status === 'wait') {
      await withTimeout(c.connect() as Promise<void>, timeoutMs, 'connect');
    } else {
      await withTimeout(
        new Promise<void>((resolve, reject) => {
          const onReady = (): void => {
            c.off('end', onEnd);
            resolve();
          };
          const onEnd = (): void => {
            c.off('ready', onReady);
            reject(new Error('connection ended'));
          };
          c.once('ready', onReady);
          c.once('end', onEnd);
        }),
        timeoutMs,
        'connect',
      );
    }
    this.everReady = true;
  }

  async duplicateForWaiting(commandTimeoutMs: number): Promise<Driver> {
    const waitOpts = {
      commandTimeout: commandTimeoutMs,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      enableAutoPipelining: false,
      enableOfflineQueue: true,
      lazyConnect: true,
      connectionName: 'tagcache-wait',
    };
    let dup: Loose;
    if (this.cluster) {
      const o = this.client.options ?? {};
      dup = this.client.duplicate(undefined, {
        ...o,
        lazyConnect: true,
        enableOfflineQueue: true,
        clusterRetryStrategy: () => null,
        redisOptions: { ...(o.redisOptions ?? {}), ...waitOpts, lazyConnect: false, retryStrategy: () => null },
      });
    } else {
      dup = this.client.duplicate({ ...waitOpts, retryStrategy: () => null });
    }
    dup.on('error', () => {});
    const d = new IoredisDriver(dup, true);
    try {
      await d.connect(commandTimeoutMs);
    } catch (e) {
      dup.disconnect();
      throw e;
    }
    return d;
  }

  async primaries(): Promise<Endpoint[]> {
    if (!this.cluster) {
      const o = this.client.options;
      return [{ host: o.host ?? '127.0.0.1', port: Number(o.port ?? 6379), ...authOf(o) }];
    }
    const ro = this.client.options?.redisOptions ?? {};
    return (this.client.nodes('master') as Loose[]).map((n) => ({
      host: n.options.host,
      port: Number(n.options.port),
      ...authOf({ ...ro, ...n.options }),
    }));
  }

  async close(): Promise<void> {
    if (!this.owned) return;
    try {
      this.client.disconnect();
    } catch {
      /* already closed */
    }
  }
}

// ---------------------------------------------------------------- node-redis
export class NodeRedisDriver implements Driver {
  readonly library = 'node-redis' as const;
  readonly cluster: boolean;
  private everReady = false;

  constructor(
    private readonly client: Loose,
    private readonly owned: boolean,
  ) {
    this.cluster = 'masters' in client && typeof client.nodeClient === 'function';
    if (client.isReady) this.everReady = true;
  }

  send(args: Arg[], key?: Arg, timeoutMs?: number): Promise<unknown> {
    const opts: Loose = { typeMapping: BUFFER_MAPPING };
    if (timeoutMs) opts.timeout = timeoutMs;
    if (this.cluster) return this.client.sendCommand(key, false, args, opts) as Promise<unknown>;
    return this.client.sendCommand(args, opts) as Promise<unknown>;
  }

  async sendToPrimaries(args: Arg[]): Promise<unknown[]> {
    if (!this.cluster) return [await this.send(args)];
    const masters: Loose[] = this.client.masters;
    return Promise.all(
      masters.map(async (m) => {
        const c: Loose = await this.client.nodeClient(m);
        return c.sendCommand(args, { typeMapping: BUFFER_MAPPING }) as Promise<unknown>;
      }),
    );
  }

  eachPrimary<T>(fn: (send: (args: Arg[]) => Promise<unknown>) => Promise<T>): Promise<T[]> {
    if (!this.cluster) return Promise.all([fn((args) => this.send(args))]);
    const masters: Loose[] = this.client.masters;
    return Promise.all(
      masters.map(async (m) => {
        const c: Loose = await this.client.nodeClient(m);
        return fn((args) => c.sendCommand(args, { typeMapping: BUFFER_MAPPING }) as Promise<unknown>);
      }),
    );
  }

  isReady(): boolean {
    if (this.cluster) return true;
    if (this.client.isReady) this.everReady = true;
    return !this.everReady || this.client.isReady === true;
  }

  async connect(timeoutMs: number): Promise<void> {
    const c = this.client;
    if (this.cluster) {
      if (!c.isOpen) await withTimeout(c.connect() as Promise<unknown>, timeoutMs, 'connect');
      this.everReady = true;
      return;
    }
    if (c.isReady) {
      this.everReady = true;
      return;
    }
    if (!c.isOpen) {
      await withTimeout(c.connect() as Promise<unknown>, timeoutMs, 'connect');
    } else {
      await withTimeout(
        new Promise<void>((resolve) => {
          c.once('ready', () => resolve());
        }),
        timeoutMs,
        'connect',
      );
    }
    this.everReady = true;
  }

  async duplicateForWaiting(commandTimeoutMs: number): Promise<Driver> {
    let dup: Loose;
    if (this.cluster) {
      dup = this.client.duplicate();
    } else {
      const socket = { ...(this.client.options?.socket ?? {}), reconnectStrategy: false };
      dup = this.client.duplicate({ socket, disableOfflineQueue: false });
    }
    dup.on('error', () => {});
    const d = new NodeRedisDriver(dup, true);
    const base = d.send.bind(d);
    d.send = (args: Arg[], key?: Arg, t?: number) => base(args, key, t ?? commandTimeoutMs);
    try {
      await d.connect(commandTimeoutMs);
    } catch (e) {
      try {
        dup.destroy();
      } catch {
        /* ignore */
      }
      throw e;
    }
    return d;
  }

  async primaries(): Promise<Endpoint[]> {
    if (this.cluster) {
      const d = this.client.options?.defaults ?? {};
      return (this.client.masters as Loose[]).map((m) => ({
        host: m.host,
        port: Number(m.port),
        ...authOf(d),
      }));
    }
    const o = this.client.options ?? {};
    let host = o.socket?.host ?? '127.0.0.1';
    let port = Number(o.socket?.port ?? 6379);
    let username: string | undefined = o.username;
    let password: string | undefined = o.password;
    if (o.url) {
      const u = new URL(o.url as string);
      host = u.hostname || host;
      port = Number(u.port || port);
      username = username ?? (u.username ? decodeURIComponent(u.username) : undefined);
      password = password ?? (u.password ? decodeURIComponent(u.password) : undefined);
    }
    return [{ host, port, username, password, tls: o.socket?.tls || undefined }];
  }

  async close(): Promise<void> {
    if (!this.owned) return;
    try {
      if (typeof this.client.destroy === 'function') this.client.destroy();
      else await this.client.disconnect();
    } catch {
      /* already closed */
    }
  }
}

/** A URL: create a client of whichever library is installed (ioredis first). */
export async function driverFromUrl(url: string): Promise<Driver> {
  try {
    const mod: Loose = await import('ioredis');
    const Redis = mod.default ?? mod.Redis ?? mod;
    const c = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
    c.on('error', () => {});
    return new IoredisDriver(c, true);
  } catch (e) {
    if (!isModuleNotFound(e)) throw e;
  }
  try {
    const mod: Loose = await import('redis');
    const c = mod.createClient({ url });
    c.on('error', () => {});
    return new NodeRedisDriver(c, true);
  } catch (e) {
    if (!isModuleNotFound(e)) throw e;
  }
  throw new Error('tagcache: install ioredis or redis (node-redis) to connect by URL');
}

function isModuleNotFound(e: unknown): boolean {
  const code = (e as { code?: string })?.code;
  return code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND';
}

export function driverFor(client: unknown): Driver {
  if (isIoredis(client)) return new IoredisDriver(client, false);
  if (isNodeRedis(client)) return new NodeRedisDriver(client, false);
  throw new TypeError('tagcache: `redis` must be a URL, an ioredis Redis/Cluster or a node-redis client/cluster');
}
