/**
 * Key → slot: Redis Cluster's rule, so that any language (and any Redis
 * Cluster client) computes the same slot for the same key.
 *
 *   slot = CRC16(hashPart(key)) mod slotCount
 *
 * - CRC16 is CRC-16/XMODEM (polynomial 0x1021, initial value 0, no
 *   reflection, no final xor) over the key's UTF-8 bytes; CRC16("123456789")
 *   = 0x31C3.
 * - hashPart is Redis's hash-tag rule: if the key contains a `{` and, after
 *   it, a `}` with at least one character between them, only the characters
 *   between the first `{` and the first `}` after it are hashed. So
 *   `{user1000}.following` and `{user1000}.followers` share a slot.
 * - With 16384 slots this is exactly Redis Cluster's `CLUSTER KEYSLOT`
 *   (Redis masks with `& 16383`, which equals `mod 16384`). For any other
 *   slot count it is `crc16 % slotCount`; a count that is not a power of two
 *   gives the lower slots at most one more 16-bit value each (a bias below
 *   slotCount / 65536).
 *
 * Strings are encoded as UTF-8 on the fly (no allocation); a lone surrogate
 * counts as U+FFFD, as `TextEncoder` does. Published test vectors:
 * docs/slots-hash-vectors.json.
 */
import { InvalidArgumentError } from '../errors.js';

/** Slot counts run from 1 to 65536: a 16-bit CRC has no more distinct values. */
export const MAX_SLOT_COUNT = 65536;

/** Redis Cluster's slot count, the default. */
export const DEFAULT_SLOT_COUNT = 16384;

const TABLE = ((): Uint16Array => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 8;
    for (let b = 0; b < 8; b++) c = c & 0x8000 ? (c << 1) ^ 0x1021 : c << 1;
    t[i] = c & 0xffff;
  }
  return t;
})();

function step(crc: number, byte: number): number {
  return ((crc << 8) ^ TABLE[((crc >>> 8) ^ byte) & 0xff]!) & 0xffff;
}

/**
 * CRC-16/XMODEM of the UTF-8 bytes of `s[start, end)`. Indices are UTF-16
 * code units (as `String.prototype.slice` uses them).
 */
function crc16Range(s: string, start: number, end: number): number {
  let crc = 0;
  for (let i = start; i < end; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) {
      crc = step(crc, c);
      continue;
    }
    if (c < 0x800) {
      crc = step(crc, 0xc0 | (c >>> 6));
      crc = step(crc, 0x80 | (c & 0x3f));
      continue;
    }
    if (c >= 0xd800 && c <= 0xdfff) {
      const next = i + 1 < end ? s.charCodeAt(i + 1) : 0;
      if (c <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
        const cp = 0x10000 + ((c - 0xd800) << 10) + (next - 0xdc00);
        i++;
        crc = step(crc, 0xf0 | (cp >>> 18));
        crc = step(crc, 0x80 | ((cp >>> 12) & 0x3f));
        crc = step(crc, 0x80 | ((cp >>> 6) & 0x3f));
        crc = step(crc, 0x80 | (cp & 0x3f));
        continue;
      }
      c = 0xfffd; // lone surrogate: what TextEncoder writes
    }
    crc = step(crc, 0xe0 | (c >>> 12));
    crc = step(crc, 0x80 | ((c >>> 6) & 0x3f));
    crc = step(crc, 0x80 | (c & 0x3f));
  }
  return crc;
}

/** CRC-16/XMODEM of a string's UTF-8 bytes, or of raw bytes. */
export function crc16(data: string | Uint8Array): number {
  if (typeof data === 'string') return crc16Range(data, 0, data.length);
  let crc = 0;
  for (let i = 0; i < data.length; i++) crc = step(crc, data[i]!);
  return crc;
}

/**
 * CRC16 of the part of `key` that Redis hashes: the hash tag if there is a
 * non-empty one, else the whole key. The 16-bit value every slot count is
 * derived from.
 */
export function keyHash16(key: string): number {
  const open = key.indexOf('{');
  if (open >= 0) {
    const close = key.indexOf('}', open + 1);
    // `{}` (empty tag) hashes the whole key, as in Redis.
    if (close > open + 1) return crc16Range(key, open + 1, close);
  }
  return crc16Range(key, 0, key.length);
}

/** Throws InvalidArgumentError unless 1 ≤ slotCount ≤ 65536 is an integer. */
export function checkSlotCount(slotCount: number): void {
  if (!Number.isInteger(slotCount) || slotCount < 1 || slotCount > MAX_SLOT_COUNT) {
    throw new InvalidArgumentError(
      `slotCount is ${String(slotCount)}; use an integer from 1 to ${MAX_SLOT_COUNT} (Redis Cluster uses ${DEFAULT_SLOT_COUNT})`,
    );
  }
}

/**
 * The slot of `key`: `keyHash16(key) % slotCount`. With the default 16384
 * slots this equals Redis Cluster's `CLUSTER KEYSLOT key`.
 */
export function slotForKey(key: string, slotCount: number = DEFAULT_SLOT_COUNT): number {
  if (typeof key !== 'string') throw new InvalidArgumentError('slotForKey: key must be a string');
  checkSlotCount(slotCount);
  return keyHash16(key) % slotCount;
}
