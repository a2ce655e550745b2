// Test harness: real redis-servers on free loopback ports, killed by pid at the end.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const MODULE = process.env.TAGCACHE_MODULE || resolve(here, '../../../target/debug/libtagcache.so');

export const silent = { info() {}, warn() {}, error() {} }; // no debug: events are not formatted

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

const live = new Set();
function killAll() {
  for (const p of live) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {}
  }
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    killAll();
    process.exit(130);
  });
}

export async function waitFor(cond, { timeout = 10_000, interval = 10, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    let ok = false;
    try {
      ok = await cond();
    } catch {}
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

function cli(port, ...args) {
  return execFileSync('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
}

/** Start redis-server (with the module unless module:false). */
export async function startRedis({ module = true, port, extra = [], dir } = {}) {
  const so = process.env.TAGCACHE_MODULE || MODULE;
  if (module && !existsSync(so)) throw new Error(`module not found: ${so} (set TAGCACHE_MODULE)`);
  port ??= await freePort();
  const ownDir = !dir;
  dir ??= mkdtempSync(join(tmpdir(), 'tagcache-node-'));
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--protected-mode', 'yes', ...extra];
  if (module) args.push('--loadmodule', so);
  const proc = spawn('redis-server', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  live.add(proc.pid);
  let exited = false;
  proc.on('exit', () => {
    exited = true;
    live.delete(proc.pid);
  });
  await waitFor(() => {
    if (exited) throw new Error('redis-server exited');
    return cli(port, 'PING') === 'PONG';
  }, { what: `redis-server on ${port}` });
  const server = {
    port,
    url: `redis://127.0.0.1:${port}`,
    pid: proc.pid,
    dir,
    cli: (...a) => cli(port, ...a),
    async kill() {
      if (exited) return;
      const done = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGKILL');
      await done;
    },
    async stop() {
      await server.kill();
      if (ownDir) rmSync(dir, { recursive: true, force: true });
    },
  };
  return server;
}

/** 3 primaries, no replicas, slots assigned by redis-cli --cluster create. */
export async function startCluster({ module = true } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'tagcache-cluster-'));
  const servers = [];
  for (let i = 0; i < 3; i++) {
    const port = await freePort();
    servers.push(
      await startRedis({
        module,
        port,
        dir,
        extra: ['--cluster-enabled', 'yes', '--cluster-config-file', join(dir, `nodes-${port}.conf`), '--cluster-node-timeout', '5000'],
      }),
    );
  }
  execFileSync('redis-cli', ['--cluster', 'create', ...servers.map((s) => `127.0.0.1:${s.port}`), '--cluster-replicas', '0', '--cluster-yes'], {
    stdio: 'ignore',
  });
  await waitFor(() => servers.every((s) => s.cli('CLUSTER', 'INFO').includes('cluster_state:ok')), { timeout: 30_000, what: 'cluster_state:ok' });
  return {
    servers,
    nodes: servers.map((s) => ({ host: '127.0.0.1', port: s.port })),
    async stop() {
      for (const s of servers) await s.kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A client of the given library on `url`, connected. */
export async function makeClient(lib, url) {
  if (lib === 'ioredis') {
    const { Redis } = await import('ioredis');
    const c = new Redis(url, { lazyConnect: true });
    c.on('error', () => {});
    await c.connect();
    return { client: c, close: () => c.disconnect() };
  }
  const { createClient } = await import('redis');
  const c = createClient({ url });
  c.on('error', () => {});
  await c.connect();
  return { client: c, close: () => c.destroy() };
}

export function stats(server, ...args) {
  return JSON.parse(server.cli('CACHE.STATS', ...args));
}
