// Size-bounded LRU with per-entry expiry. Expired entries stay (until evicted or dropped) as the
// last known value for fail-safe.
interface L1Entry {
  value: unknown;
  expiresAt: number;
}

export class L1Cache {
  private map = new Map<string, L1Entry>();
  constructor(private readonly maxEntries: number) {}

  get size(): number {
    return this.map.size;
  }

  get(key: string, now = Date.now()): { value: unknown } | undefined {
    const e = this.map.get(key);
    if (!e || e.expiresAt <= now) return undefined;
    this.map.delete(key);
    this.map.set(key, e);
    return { value: e.value };
  }

  /** The value even if expired (fail-safe's last known copy). */
  peekStale(key: string): { value: unknown } | undefined {
    const e = this.map.get(key);
    return e ? { value: e.value } : undefined;
  }

  set(key: string, value: unknown, ttlMs: number, now = Date.now()): void {
    if (ttlMs <= 0 || this.maxEntries <= 0) return;
    this.map.delete(key);
    this.map.set(key, { value, expiresAt: now + ttlMs });
    while (this.map.size > this.maxEntries) {
      const oldest = this.map.keys().next();
      if (oldest.done) break;
      this.map.delete(oldest.value);
    }
  }

  delete(key: string): boolean {
    return this.map.delete(key);
  }

  clear(): void {
    this.map.clear();
  }
}
