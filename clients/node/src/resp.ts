// A minimal RESP2/RESP3 reader for the package's own tracking connections (L1 coherence).
// Client libraries drop RESP3 `invalidate` pushes (ioredis 6) or hide them, so the L1 tracker
// speaks the protocol itself on a dedicated socket.
import * as net from 'node:net';
import * as tls from 'node:tls';

export class Push {
  constructor(readonly items: RespValue[]) {}
}
export type RespValue = null | number | bigint | Buffer | Error | RespValue[] | Push;

export class RespParser {
  private buf: Buffer = Buffer.alloc(0);
  constructor(private readonly onValue: (v: RespValue) => void) {}

  feed(chunk: Buffer): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    for (;;) {
      const r = this.parse(0);
      if (r === undefined) break;
      this.buf = this.buf.subarray(r.end);
      this.onValue(r.value);
    }
  }

  private line(pos: number): { text: string; end: number } | undefined {
    const i = this.buf.indexOf('\r\n', pos);
    if (i < 0) return undefined;
    return { text: this.buf.toString('latin1', pos + 1, i), end: i + 2 };
  }

  private parse(pos: number): { value: RespValue; end: number } | undefined {
    if (pos >= this.buf.length) return undefined;
    const t = String.fromCharCode(this.buf[pos] as number);
    const l = this.line(pos);
    if (!l) return undefined;
    switch (t) {
      case '+':
        return { value: Buffer.from(l.text, 'latin1'), end: l.end };
      case '-':
      case '!':
        return { value: new Error(l.text), end: l.end };
      case ':':
      case ',':
      case '(':
        return { value: Number(l.text), end: l.end };
      case '#':
        return { value: l.text === 't' ? 1 : 0, end: l.end };
      case '_':
        return { value: null, end: l.end };
      case '$':
      case '=': {
        const n = Number(l.text);
        if (n < 0) return { value: null, end: l.end };
        if (this.buf.length < l.end + n + 2) return undefined;
        return { value: this.buf.subarray(l.end, l.end + n), end: l.end + n + 2 };
      }
      case '*':
      case '~':
      case '>':
      case '%':
      case '|': {
        let n = Number(l.text);
        if (n < 0) return { value: null, end: l.end };
        if (t === '%' || t === '|') n *= 2;
        const items: RespValue[] = [];
        let p = l.end;
        for (let i = 0; i < n; i++) {
          const r = this.parse(p);
          if (!r) return undefined;
          items.push(r.value);
          p = r.end;
        }
        if (t === '|') return this.parse(p); // attribute: skip, return the value that follows
        return { value: t === '>' ? new Push(items) : items, end: p };
      }
      default:
        throw new Error(`RESP protocol error: unexpected byte ${t}`);
    }
  }
}

export function encodeCommand(args: (string | Buffer)[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = typeof a === 'string' ? Buffer.from(a) : a;
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

export interface Endpoint {
  host: string;
  port: number;
  username?: string | undefined;
  password?: string | undefined;
  tls?: boolean | tls.ConnectionOptions | undefined;
}

/** One socket, commands answered in order, pushes delivered to onPush. */
export class RespConnection {
  private socket: net.Socket;
  private parser: RespParser;
  private pending: { resolve: (v: RespValue) => void; reject: (e: Error) => void }[] = [];
  closed = false;

  constructor(ep: Endpoint, onPush: (p: RespValue[]) => void, private readonly onClose: () => void) {
    this.parser = new RespParser((v) => {
      if (v instanceof Push) {
        onPush(v.items);
        return;
      }
      const p = this.pending.shift();
      if (!p) return;
      if (v instanceof Error) p.reject(v);
      else p.resolve(v);
    });
    const opts = { host: ep.host, port: ep.port };
    this.socket = ep.tls
      ? tls.connect({ ...(typeof ep.tls === 'object' ? ep.tls : {}), ...opts })
      : net.connect(opts);
    this.socket.setNoDelay(true);
    this.socket.on('data', (d: Buffer) => {
      try {
        this.parser.feed(d);
      } catch {
        this.socket.destroy();
      }
    });
    const done = (): void => {
      if (this.closed) return;
      this.closed = true;
      for (const p of this.pending.splice(0)) p.reject(new Error('tracking connection closed'));
      this.onClose();
    };
    this.socket.on('error', done);
    this.socket.on('close', done);
  }

  command(args: (string | Buffer)[]): Promise<RespValue> {
    if (this.closed) return Promise.reject(new Error('tracking connection closed'));
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.socket.write(encodeCommand(args));
    });
  }

  close(): void {
    this.closed = true;
    this.socket.destroy();
  }
}
