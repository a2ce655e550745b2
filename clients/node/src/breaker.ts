export type CircuitState = 'closed' | 'open' | 'half-open';

/**
 * Consecutive-failure circuit breaker. Open: every call is refused at once. After `cooldown` ms
 * one probe runs (the caller-supplied PING); success closes the circuit, failure reopens it.
 */
export class CircuitBreaker {
  state: CircuitState = 'closed';
  private failures = 0;
  private openUntil = 0;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly threshold: number,
    private readonly cooldownMs: number,
    private readonly probe: () => Promise<void>,
    private readonly onChange: (s: CircuitState) => void,
  ) {}

  allow(): boolean {
    if (this.threshold <= 0) return true;
    if (this.state === 'closed') return true;
    if (this.state === 'open' && Date.now() >= this.openUntil) this.startProbe();
    return false;
  }

  private startProbe(): void {
    if (this.state !== 'open' || this.stopped) return;
    this.state = 'half-open';
    this.probe().then(
      () => this.close(),
      () => this.open(),
    );
  }

  /** No more probes (the cache is closed). */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  success(): void {
    this.failures = 0;
  }

  failure(): void {
    if (this.threshold <= 0) return;
    this.failures++;
    if (this.state === 'closed' && this.failures >= this.threshold) this.open();
  }

  private open(): void {
    this.openUntil = Date.now() + this.cooldownMs;
    const was = this.state;
    this.state = 'open';
    // probe after the cooldown even when no call comes (the circuit closes on its own)
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.startProbe(), this.cooldownMs);
    this.timer.unref();
    if (was === 'closed') this.onChange('open');
  }

  private close(): void {
    this.failures = 0;
    this.state = 'closed';
    this.onChange('closed');
  }
}
