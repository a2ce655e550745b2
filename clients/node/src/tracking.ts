// L1 coherence: one RESP3 connection per primary with `CLIENT TRACKING on BCAST [PREFIX p]`.
// The server pushes `invalidate [keys]` whenever any client sets, deletes, invalidates or expires
// a key under the prefix (module writes included), `invalidate null` on FLUSH.
import { RespConnection, type Endpoint, type RespValue } from './resp.js';

export class Tracker {
  private conns: RespConnection[] = [];
  private stopped = false;
  private connected = 0;
  private wanted = 0;
  private timer: NodeJS.Timeout | undefined;
  private retryDelay = 100;

  constructor(
    private readonly endpoints: () => Promise<Endpoint[]>,
    private readonly prefix: string,
    private readonly onKeys: (keys: string[] | null) => void,
    private readonly onState: (up: boolean, err?: unknown) => void,
  ) {}

  /** true while every primary's tracking connection is up: only then may L1 serve. */
  get healthy(): boolean {
    return !this.stopped && this.wanted > 0 && this.connected === this.wanted;
  }

  async start(): Promise<void> {
    const eps = await this.endpoints();
    this.wanted = eps.length;
    await Promise.all(eps.map((ep) => this.open(ep)));
  }

  private async open(ep: Endpoint): Promise<void> {
    if (this.stopped) return;
    let up = false;
    const conn = new RespConnection(
      ep,
      (push) => this.onPush(push),
      () => {
        this.conns = this.conns.filter((c) => c !== conn);
        if (up) this.connected--;
        up = false;
        // Invalidations may have been missed: everything in L1 is suspect.
        this.onKeys(null);
        this.onState(false);
        if (!this.stopped) {
          // reconnect with backoff (100 ms doubling to 5 s) while the server is away
          this.retryDelay = Math.min(5_000, this.retryDelay * 2);
          this.timer = setTimeout(() => void this.open(ep).catch(() => {}), this.retryDelay).unref();
        }
      },
    );
    this.conns.push(conn);
    try {
      const hello: (string | Buffer)[] = ['HELLO', '3'];
      if (ep.password) hello.push('AUTH', ep.username ?? 'default', ep.password);
      hello.push('SETNAME', 'tagcache-tracking');
      await conn.command(hello);
      const args: (string | Buffer)[] = ['CLIENT', 'TRACKING', 'on', 'BCAST'];
      if (this.prefix) args.push('PREFIX', this.prefix);
      await conn.command(args);
      up = true;
      this.retryDelay = 100;
      this.connected++;
      this.onKeys(null); // anything cached before tracking was (re)established is suspect
      this.onState(true);
    } catch (e) {
      this.onState(false, e);
      conn.close();
    }
  }

  private onPush(push: RespValue[]): void {
    const kind = Buffer.isBuffer(push[0]) ? push[0].toString() : '';
    if (kind !== 'invalidate') return;
    const keys = push[1];
    if (keys == null || !Array.isArray(keys)) {
      this.onKeys(null);
      return;
    }
    this.onKeys(keys.map((k) => (Buffer.isBuffer(k) ? k.toString('utf8') : String(k))));
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    for (const c of this.conns.splice(0)) c.close();
  }
}
