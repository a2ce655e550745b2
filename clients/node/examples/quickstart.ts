// Type-checked against the published declarations by `npm test` (tsc -p examples): the README's
// five-minute start, with both client libraries.
import { Redis, Cluster } from 'ioredis';
import { createClient } from 'redis';
import { createCache, TimeoutError, type FactoryContext, type Metrics } from 'tagcache';

interface Product {
  id: number;
  name: string;
}

const db = { findProduct: async (id: number): Promise<Product> => ({ id, name: `p${id}` }) };

export async function withIoredis(): Promise<void> {
  const redis = new Redis('redis://127.0.0.1:6379', { lazyConnect: true });
  const cache = createCache({ redis, prefix: 'shop:', ttl: 300, grace: 60, l1: { maxEntries: 1000, ttl: 5 } });
  const id = 42;
  const product: Product = await cache.getOrSet({
    key: `product:{acme}:${id}`,
    tags: ['products', `product:${id}`],
    timeout: 100,
    failSafe: true,
    factory: async (ctx: FactoryContext<Product>) => {
      if (ctx.stale) ctx.setTtl(600);
      return db.findProduct(id);
    },
  });
  const name: string = product.name;
  const cached: Product | undefined = await cache.get<Product>(`product:{acme}:${id}`);
  const ok: boolean = await cache.set('settings', { theme: 'dark' }, { ttl: 3600, tags: ['settings'] });
  const removed: number = await cache.invalidateTags([`product:${id}`], { soft: true });
  const byPattern: number = await cache.invalidate({ tenant: 'acme', pattern: 'product:*' });
  const wrapped: number = await cache.wrap('answer', async () => 42, 10_000);
  const m: Metrics = cache.metrics();
  const text: string = await cache.prometheus({ tenants: ['acme'] });
  cache.on('fill_rejected', (e: { key: string }) => void e.key);
  try {
    await cache.getOrSet({ key: 'slow', hardTimeout: 50, factory: () => new Promise<number>(() => {}) });
  } catch (e) {
    if (!(e instanceof TimeoutError)) throw e;
  }
  void [name, cached, ok, removed, byPattern, wrapped, m.circuit, text];
  await cache.close();
  redis.disconnect();
}

export async function withNodeRedis(): Promise<void> {
  const client = createClient({ url: 'redis://127.0.0.1:6379' });
  client.on('error', () => {});
  await client.connect();
  const cache = createCache({ redis: client, mode: 'auto', retry: { retries: 3 }, circuitBreaker: { threshold: 5, cooldown: 2000 } });
  const n = await cache.getOrSet({ key: 'n', factory: () => 1 });
  const doubled: number = n * 2;
  const stats = await cache.stats({ tenant: 'acme' });
  void [doubled, stats?.hits];
  await cache.close();
  client.destroy();
}

export function withCluster(): void {
  const cluster = new Cluster([{ host: '127.0.0.1', port: 7000 }]);
  createCache({ redis: cluster, logger: console });
  createCache({ redis: 'redis://127.0.0.1:6379', serializer: { serialize: (v) => JSON.stringify(v), deserialize: (b) => JSON.parse(b.toString()) } });
}
