/**
 * How contract keys map to znodes, and the envelope a key's znode holds.
 *
 * Namespace `ns` lives at `<base>/<ns>` where `<base>` is the URL's chroot
 * followed by the root path (default `/rebalancer`):
 *
 *   <base>/<ns>          persistent; data = layout header `{"layout":1}`
 *   <base>/<ns>/rev      persistent; every write transaction sets its data
 *                        with the version it read (serialises writers)
 *   <base>/<ns>/d        persistent; parent of the directory znodes
 *   <base>/<ns>/d/<D>    persistent; one per directory part, D = "d" + escape(dirPart)
 *   <base>/<ns>/d/<D>/<L> the key; L = "k" + escape(leaf); ephemeral when
 *                        attached to a session (ephemerals cannot have children,
 *                        which is why keys are not nested paths)
 *
 * A key splits after its LAST '/': dirPart = everything up to and including it
 * (possibly ""), leaf = the rest (possibly ""). The one-letter prefixes keep
 * names non-empty and never "." or "..".
 */
import { CorruptDataError } from '../../errors.js';
import { decodeUtf8 } from '../../store/validate.js';

/** Version of the znode layout this build reads and writes. */
export const LAYOUT_VERSION = 1;

/** Data of the namespace znode. */
export function encodeLayoutHeader(): Buffer {
  return Buffer.from(JSON.stringify({ layout: LAYOUT_VERSION }), 'utf8');
}

/**
 * The layout version recorded in a namespace znode, or a CorruptDataError
 * when the znode was not written by Rebalancer.
 */
export function decodeLayoutHeader(data: Buffer | null | undefined, path: string): number {
  const text = decodeUtf8(data ?? Buffer.alloc(0), `layout header of ${path}`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (cause) {
    throw new CorruptDataError(
      `znode ${path} does not hold a Rebalancer layout header (got ${JSON.stringify(text.slice(0, 60))}); ` +
        'it was not created by Rebalancer: use another namespace or root path',
      { cause },
    );
  }
  const layout = (parsed as { layout?: unknown } | null)?.layout;
  if (typeof parsed !== 'object' || parsed === null || typeof layout !== 'number' || !Number.isSafeInteger(layout)) {
    throw new CorruptDataError(
      `znode ${path} holds ${JSON.stringify(text.slice(0, 60))}, not a Rebalancer layout header; ` +
        'use another namespace or root path',
    );
  }
  return layout;
}

// ---- names ------------------------------------------------------------------

/**
 * Characters ZooKeeper's PathUtils rejects or that would be ambiguous: '/'
 * (separator), '%' (our escape), controls, and the UTF-16 ranges ZooKeeper
 * refuses (which include every surrogate, so astral characters are escaped).
 */
function needsEscape(code: number): boolean {
  return (
    code <= 0x1f ||
    code === 0x25 || // %
    code === 0x2f || // /
    (code >= 0x7f && code <= 0x9f) ||
    (code >= 0xd800 && code <= 0xf8ff) ||
    code >= 0xfff0
  );
}

/** Reversible escape into a valid znode name fragment (UTF-8 bytes of escaped characters as %XX). */
export function escapeName(s: string): string {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const code = s.charCodeAt(i);
    if (!needsEscape(code)) {
      out += s[i];
      continue;
    }
    // A surrogate pair is one code point: escape its UTF-8 bytes together.
    const isHigh = code >= 0xd800 && code <= 0xdbff && i + 1 < s.length;
    const ch = isHigh ? s.slice(i, i + 2) : (s[i] ?? '');
    if (isHigh) i++;
    for (const b of Buffer.from(ch, 'utf8')) out += `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** Inverse of escapeName; undefined when `s` is not something escapeName produces. */
export function unescapeName(s: string): string | undefined {
  if (!s.includes('%')) return s;
  const bytes: number[] = [];
  let i = 0;
  const flushText = (text: string): void => {
    for (const b of Buffer.from(text, 'utf8')) bytes.push(b);
  };
  while (i < s.length) {
    const j = s.indexOf('%', i);
    if (j < 0) {
      flushText(s.slice(i));
      break;
    }
    flushText(s.slice(i, j));
    const hex = s.slice(j + 1, j + 3);
    if (!/^[0-9A-F]{2}$/.test(hex)) return undefined;
    bytes.push(parseInt(hex, 16));
    i = j + 3;
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(Uint8Array.from(bytes));
  } catch {
    return undefined;
  }
}

export interface SplitKey {
  /** Up to and including the last '/', or "". */
  readonly dirPart: string;
  readonly leaf: string;
}

export function splitKey(key: string): SplitKey {
  const i = key.lastIndexOf('/');
  return { dirPart: key.slice(0, i + 1), leaf: key.slice(i + 1) };
}

export function dirName(dirPart: string): string {
  return `d${escapeName(dirPart)}`;
}

export function leafName(leaf: string): string {
  return `k${escapeName(leaf)}`;
}

/** The dirPart a directory znode name stands for, or undefined for a foreign znode. */
export function parseDirName(name: string): string | undefined {
  if (!name.startsWith('d')) return undefined;
  const part = unescapeName(name.slice(1));
  if (part === undefined) return undefined;
  // A valid dirPart is "" or ends with its only... last '/'.
  if (part !== '' && !part.endsWith('/')) return undefined;
  return part;
}

/** The leaf a key znode name stands for, or undefined for a foreign znode. */
export function parseLeafName(name: string): string | undefined {
  if (!name.startsWith('k')) return undefined;
  const leaf = unescapeName(name.slice(1));
  if (leaf === undefined || leaf.includes('/')) return undefined;
  return leaf;
}

/** Directories whose keys can start with `prefix`. */
export function dirCanMatch(dirPart: string, prefix: string): boolean {
  return dirPart.startsWith(prefix) || dirPart === splitKey(prefix).dirPart;
}

// ---- key envelope -------------------------------------------------------------

/**
 * A key znode's data: one header line, then the value's UTF-8 bytes.
 *
 *   `r1 <version>\n<value>`            the key was created with this znode
 *   `r1 <version> <createRevision>\n…` the key outlived an earlier znode
 *                                      (attached to / detached from a session
 *                                      = delete + create), so czxid is not
 *                                      its create revision
 *
 * The version is written by us (we always know the previous one: writers are
 * serialised), so it survives re-creation too.
 */
export interface Envelope {
  readonly version: number;
  readonly createRevision: number | undefined;
  readonly value: string;
}

const HEADER_RE = /^r1 ([1-9][0-9]{0,15})(?: ([1-9][0-9]{0,15}))?$/;
const MAX_HEADER_BYTES = 40;

export function encodeEnvelope(version: number, createRevision: number | undefined, value: string): Buffer {
  const header = createRevision === undefined ? `r1 ${version}\n` : `r1 ${version} ${createRevision}\n`;
  return Buffer.concat([Buffer.from(header, 'ascii'), Buffer.from(value, 'utf8')]);
}

export function decodeEnvelope(data: Buffer | null | undefined, key: string): Envelope {
  const bytes = data ?? Buffer.alloc(0);
  const nl = bytes.subarray(0, MAX_HEADER_BYTES).indexOf(0x0a);
  const header = nl < 0 ? undefined : HEADER_RE.exec(bytes.subarray(0, nl).toString('latin1'));
  if (header === undefined || header === null) {
    throw new CorruptDataError(
      `key ${JSON.stringify(key)}: its znode does not hold a Rebalancer envelope; it was not written by Rebalancer. ` +
        'Inspect or delete it with zkCli.',
      { key },
    );
  }
  const version = Number(header[1]);
  const createRevision = header[2] === undefined ? undefined : Number(header[2]);
  if (!Number.isSafeInteger(version) || (createRevision !== undefined && !Number.isSafeInteger(createRevision))) {
    throw new CorruptDataError(`key ${JSON.stringify(key)}: envelope numbers out of range`, { key });
  }
  const value = decodeUtf8(bytes.subarray(nl + 1), `value of key ${JSON.stringify(key)}`, key);
  return { version, createRevision, value };
}

/** Bytes the envelope adds to a value (for size accounting). */
export const ENVELOPE_OVERHEAD_BYTES = MAX_HEADER_BYTES;

// ---- zxids ------------------------------------------------------------------

/**
 * A zxid as a JS number. zxid = epoch << 32 | counter; it stays below 2^53
 * while the ensemble's epoch (one per leader election) is below 2^21.
 */
export function zxidToNumber(zxid: Buffer | undefined, what: string): number {
  if (zxid === undefined || zxid.length !== 8) {
    throw new CorruptDataError(`${what}: the server sent a malformed zxid`);
  }
  const n = zxid.readBigUInt64BE(0);
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new CorruptDataError(
      `${what}: zxid 0x${n.toString(16)} exceeds 2^53 (ZooKeeper epoch above 2^21); revisions cannot be represented`,
    );
  }
  return Number(n);
}

/** A ZooKeeper session id (8 bytes) as the contract's session id: 16 lowercase hex digits. */
export function sessionIdHex(id: Buffer): string {
  return id.toString('hex').padStart(16, '0');
}

export function isZeroId(id: Buffer | undefined): boolean {
  return id === undefined || id.every((b) => b === 0);
}
