import type { StatsDoc } from './backend.js';
import type { Metrics } from './cache.js';

const COUNTERS = new Set([
  'hits', 'misses', 'stale_hits', 'sets', 'fills', 'fills_rejected', 'leases_granted', 'leases_expired',
  'leases_abandoned', 'waits', 'waits_served', 'wait_timeouts', 'invalidations', 'keys_invalidated',
]);

function esc(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function labels(l: Record<string, string>): string {
  const parts = Object.entries(l).map(([k, v]) => `${k}="${esc(v)}"`);
  return parts.length ? `{${parts.join(',')}}` : '';
}

/**
 * Prometheus text exposition of CACHE.STATS: `tagcache_<field>` global, with `{tenant="t"}` per
 * tenant, `tagcache_namespace_<field>{namespace="n"}` per namespace, and `tagcache_client_*` for
 * this process's metrics().
 */
export function renderPrometheus(global: StatsDoc | null, tenants: Record<string, StatsDoc>, local: Metrics): string {
  const series = new Map<string, { type: string; lines: string[] }>();
  const add = (name: string, type: string, l: Record<string, string>, v: unknown): void => {
    if (typeof v !== 'number' || !Number.isFinite(v)) return;
    let s = series.get(name);
    if (!s) series.set(name, (s = { type, lines: [] }));
    s.lines.push(`${name}${labels(l)} ${v}`);
  };
  const typeOf = (f: string): string => (COUNTERS.has(f) ? 'counter' : 'gauge');
  if (global) {
    for (const [f, v] of Object.entries(global)) {
      if (f === 'namespaces') continue;
      add(`tagcache_${f}`, typeOf(f), {}, v);
    }
    for (const [ns, fields] of Object.entries(global.namespaces ?? {})) {
      for (const [f, v] of Object.entries(fields)) add(`tagcache_namespace_${f}`, typeOf(f), { namespace: ns }, v);
    }
  }
  for (const [t, doc] of Object.entries(tenants)) {
    for (const [f, v] of Object.entries(doc)) {
      if (f === 'namespaces') continue;
      add(`tagcache_tenant_${f}`, typeOf(f), { tenant: t }, v);
    }
  }
  const c = 'counter';
  add('tagcache_client_hits', c, {}, local.hits);
  add('tagcache_client_misses', c, {}, local.misses);
  add('tagcache_client_stale', c, {}, local.stale);
  add('tagcache_client_l1_hits', c, {}, local.l1_hits);
  add('tagcache_client_factory_calls', c, {}, local.factory_calls);
  add('tagcache_client_factory_errors', c, {}, local.factory_errors);
  add('tagcache_client_factory_seconds_sum', c, {}, local.factory_latency.sum_ms / 1000);
  add('tagcache_client_factory_seconds_count', c, {}, local.factory_latency.count);
  add('tagcache_client_fills', c, {}, local.fills);
  add('tagcache_client_fills_rejected', c, {}, local.fills_rejected);
  add('tagcache_client_fail_open', c, {}, local.fail_open);
  add('tagcache_client_errors', c, {}, local.errors);
  add('tagcache_client_circuit_open', 'gauge', {}, local.circuit === 'closed' ? 0 : 1);
  const out: string[] = [];
  for (const [name, s] of series) {
    out.push(`# TYPE ${name} ${s.type}`, ...s.lines);
  }
  return out.join('\n') + '\n';
}
