/**
 * Decoding of rows read back from PostgreSQL. Rows are untrusted: anything
 * Rebalancer would not have written is a CorruptDataError, never repaired.
 */
import { CorruptDataError } from '../../errors.js';
import type { KeyValue } from '../../store/contract.js';
import { decodeUtf8 } from '../../store/validate.js';

export interface KvRow {
  readonly key: unknown;
  readonly value: unknown;
  readonly version: unknown;
  readonly create_rev: unknown;
  readonly mod_rev: unknown;
  readonly session_id: unknown;
}

/** Column list matching KvRow, for a kv table aliased `k`. */
export const KV_COLUMNS = 'k.key, k.value, k.version, k.create_rev, k.mod_rev, k.session_id';

/**
 * A bigint column (pg hands int8 over as text) as a JS number. Above 2^53 it
 * could not be represented exactly, and comparing fencing tokens on rounded
 * numbers would be unsafe, so that is corruption rather than rounding.
 */
export function parseBigint(raw: unknown, what: string, min: number, key?: string): number {
  const text = typeof raw === 'number' ? String(raw) : raw;
  if (typeof text !== 'string' || !/^-?\d{1,20}$/.test(text)) {
    throw new CorruptDataError(
      `${what} read from PostgreSQL is not an integer: ${JSON.stringify(raw)}`,
      corruptOpts(key),
    );
  }
  const n = Number(text);
  if (!Number.isSafeInteger(n)) {
    throw new CorruptDataError(
      `${what} read from PostgreSQL is ${text}, above 2^53 - 1; Rebalancer cannot represent it exactly. ` +
        'It was not written by Rebalancer: inspect the table.',
      corruptOpts(key),
    );
  }
  if (n < min) {
    throw new CorruptDataError(
      `${what} read from PostgreSQL is ${text}, below ${min}; it was not written by Rebalancer`,
      corruptOpts(key),
    );
  }
  return n;
}

function corruptOpts(key: string | undefined): { key?: string } {
  return key === undefined ? {} : { key };
}

function bytes(raw: unknown, what: string, key?: string): Uint8Array {
  if (!(raw instanceof Uint8Array)) {
    throw new CorruptDataError(`${what} read from PostgreSQL is not bytea`, corruptOpts(key));
  }
  return raw;
}

export function decodeKey(raw: unknown): string {
  return decodeUtf8(bytes(raw, 'a key'), 'a key');
}

/** Best-effort text of a key for notifications (never throws; corrupt bytes become U+FFFD). */
export function lenientKey(raw: unknown): string {
  return raw instanceof Uint8Array ? Buffer.from(raw).toString('utf8') : '';
}

export function decodeRow(row: KvRow): KeyValue {
  const key = decodeKey(row.key);
  const value = decodeUtf8(bytes(row.value, `the value of ${key}`, key), `the value of ${key}`, key);
  const version = parseBigint(row.version, `version of ${key}`, 1, key);
  const createRevision = parseBigint(row.create_rev, `create revision of ${key}`, 1, key);
  const modRevision = parseBigint(row.mod_rev, `mod revision of ${key}`, createRevision, key);
  const sid = row.session_id;
  if (sid !== null && typeof sid !== 'string') {
    throw new CorruptDataError(`session id of ${key} read from PostgreSQL is not text`, { key });
  }
  return { key, value, version, createRevision, modRevision, sessionId: sid ?? undefined };
}

/** JS string order (UTF-16 code units), the order every backend returns. */
export function byKey(a: KeyValue, b: KeyValue): number {
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}

/**
 * The byte range [low, high) of every key starting with `prefix`. UTF-8 never
 * contains the byte 0xFF, so incrementing the last byte of the prefix gives
 * the least byte string above all its extensions. `high` is null for the
 * empty prefix (the whole namespace).
 */
export function prefixRange(prefix: string): [Buffer, Buffer | null] {
  const low = Buffer.from(prefix, 'utf8');
  if (low.length === 0) return [low, null];
  const high = Buffer.from(low);
  const last = high.length - 1;
  high[last] = (high[last] ?? 0) + 1;
  return [low, high];
}
