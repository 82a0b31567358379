/**
 * NOTIFY payloads: `{"ns": namespace, "rev": revision, "keys": [...]}`, or
 * `{"ns", "rev", "lcp": longest common prefix of the keys}` when the key list
 * would not fit PostgreSQL's 8000-byte payload limit. A watcher is hinted
 * when a changed key may fall under its prefix; with only the common prefix
 * that can be a spurious hint, never a missing one.
 */

const MAX_PAYLOAD_BYTES = 7900;

export interface ChangeNotice {
  readonly ns: string;
  readonly rev: number;
  readonly keys?: readonly string[];
  readonly lcp?: string;
}

function commonPrefix(keys: readonly string[]): string {
  let p = keys[0] ?? '';
  for (const k of keys) {
    let i = 0;
    while (i < p.length && i < k.length && p.charCodeAt(i) === k.charCodeAt(i)) i++;
    p = p.slice(0, i);
    if (p === '') break;
  }
  return p;
}

export function encodeNotice(ns: string, rev: number, keys: readonly string[]): string {
  const full = JSON.stringify({ ns, rev, keys });
  if (Buffer.byteLength(full, 'utf8') <= MAX_PAYLOAD_BYTES) return full;
  return JSON.stringify({ ns, rev, lcp: commonPrefix(keys) });
}

/** Parse a payload; undefined when it is not one of ours (ignored). */
export function decodeNotice(payload: string | undefined): ChangeNotice | undefined {
  if (payload === undefined) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(payload);
  } catch {
    return undefined;
  }
  if (v === null || typeof v !== 'object') return undefined;
  const o = v as Record<string, unknown>;
  const ns = o['ns'];
  const rev = o['rev'];
  if (typeof ns !== 'string' || typeof rev !== 'number' || !Number.isSafeInteger(rev) || rev < 0) return undefined;
  const keys = o['keys'];
  if (Array.isArray(keys) && keys.every((k): k is string => typeof k === 'string')) return { ns, rev, keys };
  const lcp = o['lcp'];
  if (typeof lcp === 'string') return { ns, rev, lcp };
  return { ns, rev };
}

export function noticeMatches(n: ChangeNotice, prefix: string): boolean {
  if (n.keys !== undefined) return n.keys.some((k) => k.startsWith(prefix));
  if (n.lcp !== undefined) return n.lcp.startsWith(prefix) || prefix.startsWith(n.lcp);
  return true;
}
