/** Turns values into bytes and back. Replaces both directions when given to `createCache`. */
export interface Serializer {
  serialize(value: unknown): Buffer | string;
  deserialize(data: Buffer): unknown;
}

/** Marker byte for raw Buffers: JSON text never starts with 0x00. */
export const BUFFER_MARKER = 0x00;

/**
 * Default: JSON (UTF-8) for everything except Buffers, which are stored as one 0x00 marker byte
 * followed by the bytes and come back as Buffers. `undefined` is stored as JSON `null`.
 */
export const jsonSerializer: Serializer = {
  serialize(value: unknown): Buffer | string {
    if (Buffer.isBuffer(value)) {
      const out = Buffer.allocUnsafe(value.length + 1);
      out[0] = BUFFER_MARKER;
      value.copy(out, 1);
      return out;
    }
    if (value instanceof Uint8Array) return jsonSerializer.serialize(Buffer.from(value));
    const s = JSON.stringify(value);
    return s === undefined ? 'null' : s;
  },
  deserialize(data: Buffer): unknown {
    if (data.length > 0 && data[0] === BUFFER_MARKER) return Buffer.from(data.subarray(1));
    return JSON.parse(data.toString('utf8'));
  },
};
