/**
 * CRC-32 (IEEE 802.3, zlib's): node:zlib's native crc32 when present (Node ≥ 20.15), else a table-driven one giving
 * the same values.
 */
import * as zlib from 'node:zlib';

const TABLE = ((): Uint32Array => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

/** The table-driven CRC-32 (exported for its test against the native one). */
export function crc32Table(data: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < data.byteLength; i++) c = TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const native = (zlib as { crc32?: (data: Uint8Array) => number }).crc32;

export const zlib32: (data: Uint8Array) => number = native === undefined ? crc32Table : (d) => native(d) >>> 0;
