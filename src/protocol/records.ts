/**
 * Decoding the JSON records the protocols keep in the store. Everything read
 * back is untrusted: each helper returns the typed field or throws
 * CorruptDataError naming the key, so a bad key is reported, never trusted.
 */
import { CorruptDataError } from '../errors.js';

/** Parse a record written with `{ v: version, … }`; `what` names the protocol in the message. */
export function parseRecord(key: string, value: string, version: number, what: string): Record<string, unknown> {
  const expected = `a JSON object {"v": ${version}, …} written by Rebalancer's ${what}`;
  // Nothing reads past this: a record that is not ours is reported and left as it is, never overwritten.
  const repair = 'nothing overwrites it; look at it, then delete it (`rebalancer groups repair` for a group key)';
  let obj: unknown;
  try {
    obj = JSON.parse(value);
  } catch (cause) {
    throw new CorruptDataError(`${key} does not hold valid JSON; it was not written by Rebalancer: ${repair}`, {
      key,
      cause,
      expected,
    });
  }
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw new CorruptDataError(`${key} does not hold a JSON object: ${repair}`, { key, expected });
  }
  const rec = obj as Record<string, unknown>;
  if (rec['v'] !== version) {
    throw new CorruptDataError(
      `${key} has ${what} version ${JSON.stringify(rec['v'])}; this Rebalancer speaks version ${version}`,
      { key, expected },
    );
  }
  return rec;
}

export function intField(key: string, rec: Record<string, unknown>, field: string, min = 0): number {
  const v = rec[field];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    throw new CorruptDataError(`${key}: field ${field} must be an integer >= ${min}, got ${JSON.stringify(v)}`, {
      key,
    });
  }
  return v;
}

export function strField(key: string, rec: Record<string, unknown>, field: string): string {
  const v = rec[field];
  if (typeof v !== 'string') throw new CorruptDataError(`${key}: field ${field} must be a string`, { key });
  return v;
}
