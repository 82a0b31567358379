/**
 * The bytes of the write-ahead log and of snapshot files (docs/adr/0019-raft-log-format.md).
 *
 * A record: `u32 bodyLength · u32 crc32(body) · body`, little-endian; body = `u8 type · u16 groupLength · group
 * (UTF-8) · payload`. Integers that are log indexes or terms are u64 (written as two u32, low word first; values
 * stay below 2^53). Payloads:
 * - ENTRIES (1): `u32 count`, then per entry `u64 index · u64 term · u8 type (0 normal, 1 membership) · u32 length
 *   · data`. Consecutive indexes; the first one cuts whatever the group's log held from there on.
 * - HARD_STATE (2): `u64 term · u64 commit · u16 voteLength · vote (UTF-8)`.
 * - INSTALL (3): `u64 index · u64 term`: the group's log was replaced by the snapshot at (index, term), whose
 *   file was durable before this record was written.
 * - DROP (4): no payload. The group was dropped: nothing before this record belongs to it any more (its snapshot
 *   files are deleted after this record is durable; recovery deletes those left by a crash). Records after it are a
 *   new group of the same name. Added after the first release: logs without it read as before.
 */
import { zlib32 } from './crc.js';
import type { Entry, HardState } from '../messages.js';

export const RECORD_HEADER_BYTES = 8;

export const enum RecordType {
  Entries = 1,
  HardState = 2,
  Install = 3,
  Drop = 4,
}

export type Record =
  | { readonly type: RecordType.Entries; readonly group: string; readonly entries: readonly Entry[] }
  | { readonly type: RecordType.HardState; readonly group: string; readonly hardState: HardState }
  | { readonly type: RecordType.Install; readonly group: string; readonly index: number; readonly term: number }
  | { readonly type: RecordType.Drop; readonly group: string };

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/**
 * The UTF-8 of the few strings every record repeats (group ids, node ids in votes): encoded once, not twice per
 * record. Bounded: emptied when full (a node holds at most some thousands of groups).
 */
const utf8Cache = new Map<string, Uint8Array>();
const UTF8_CACHE_MAX = 16_384;
function utf8(s: string): Uint8Array {
  let b = utf8Cache.get(s);
  if (b === undefined) {
    if (utf8Cache.size >= UTF8_CACHE_MAX) utf8Cache.clear();
    b = encoder.encode(s);
    utf8Cache.set(s, b);
  }
  return b;
}
const TWO_32 = 2 ** 32;

function setU64(v: DataView, at: number, n: number): void {
  v.setUint32(at, n % TWO_32, true);
  v.setUint32(at + 4, Math.floor(n / TWO_32), true);
}

function getU64(v: DataView, at: number): number {
  return v.getUint32(at, true) + v.getUint32(at + 4, true) * TWO_32;
}

/** The size of a record once encoded. */
export function recordBytes(r: Record, groupBytes: number): number {
  const base = RECORD_HEADER_BYTES + 1 + 2 + groupBytes;
  switch (r.type) {
    case RecordType.Entries: {
      let n = base + 4;
      for (const e of r.entries) n += 8 + 8 + 1 + 4 + e.data.byteLength;
      return n;
    }
    case RecordType.HardState:
      return base + 16 + 2 + utf8(r.hardState.vote).byteLength;
    case RecordType.Install:
      return base + 16;
    case RecordType.Drop:
      return base;
  }
}

/** Encode `r` into `out` at `at`; returns the offset after it. */
export function encodeRecord(
  r: Record,
  out: Uint8Array,
  at: number,
  v = new DataView(out.buffer, out.byteOffset, out.byteLength),
): number {
  const group = utf8(r.group);
  const start = at;
  let p = at + RECORD_HEADER_BYTES;
  v.setUint8(p, r.type);
  v.setUint16(p + 1, group.byteLength, true);
  out.set(group, p + 3);
  p += 3 + group.byteLength;
  switch (r.type) {
    case RecordType.Entries:
      v.setUint32(p, r.entries.length, true);
      p += 4;
      for (const e of r.entries) {
        setU64(v, p, e.index);
        setU64(v, p + 8, e.term);
        v.setUint8(p + 16, e.type === 'membership' ? 1 : 0);
        v.setUint32(p + 17, e.data.byteLength, true);
        out.set(e.data, p + 21);
        p += 21 + e.data.byteLength;
      }
      break;
    case RecordType.HardState: {
      const vote = utf8(r.hardState.vote);
      setU64(v, p, r.hardState.term);
      setU64(v, p + 8, r.hardState.commit);
      v.setUint16(p + 16, vote.byteLength, true);
      out.set(vote, p + 18);
      p += 18 + vote.byteLength;
      break;
    }
    case RecordType.Install:
      setU64(v, p, r.index);
      setU64(v, p + 8, r.term);
      p += 16;
      break;
    case RecordType.Drop:
      break;
  }
  const bodyStart = start + RECORD_HEADER_BYTES;
  v.setUint32(start, p - bodyStart, true);
  v.setUint32(start + 4, zlib32(out.subarray(bodyStart, p)), true);
  return p;
}

/** Encode records into one buffer (one write). */
export function encodeRecords(records: readonly Record[]): Uint8Array {
  let n = 0;
  for (const r of records) n += recordBytes(r, utf8(r.group).byteLength);
  const out = new Uint8Array(n);
  const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
  let at = 0;
  for (const r of records) at = encodeRecord(r, out, at, v);
  return out;
}

/** What scanning a segment found: its good records, and where the good part ends (with why, when it ends early). */
export interface Scan {
  readonly records: { readonly record: Record; readonly offset: number; readonly end: number }[];
  readonly goodBytes: number;
  readonly problem: string | undefined;
}

/** Read the records of a segment up to the first one that is incomplete or fails its checksum. */
export function scanSegment(bytes: Uint8Array): Scan {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const records: Scan['records'][number][] = [];
  let at = 0;
  while (at < bytes.byteLength) {
    if (bytes.byteLength - at < RECORD_HEADER_BYTES) return { records, goodBytes: at, problem: 'a truncated header' };
    const len = v.getUint32(at, true);
    const crc = v.getUint32(at + 4, true);
    const end = at + RECORD_HEADER_BYTES + len;
    if (len < 3) return { records, goodBytes: at, problem: `a record length of ${len}` };
    if (end > bytes.byteLength) return { records, goodBytes: at, problem: 'a truncated record' };
    const body = bytes.subarray(at + RECORD_HEADER_BYTES, end);
    if (zlib32(body) !== crc) return { records, goodBytes: at, problem: 'a checksum mismatch' };
    let record: Record;
    try {
      record = decodeBody(body);
    } catch (e) {
      return { records, goodBytes: at, problem: `an undecodable record (${(e as Error).message})` };
    }
    records.push({ record, offset: at, end });
    at = end;
  }
  return { records, goodBytes: at, problem: undefined };
}

function decodeBody(body: Uint8Array): Record {
  const v = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const type = v.getUint8(0);
  const groupLen = v.getUint16(1, true);
  const group = decoder.decode(body.subarray(3, 3 + groupLen));
  let p = 3 + groupLen;
  const need = (n: number): void => {
    if (p + n > body.byteLength) throw new RangeError('the record is shorter than its fields');
  };
  switch (type) {
    case RecordType.Entries: {
      need(4);
      const count = v.getUint32(p, true);
      p += 4;
      const entries: Entry[] = [];
      for (let i = 0; i < count; i++) {
        need(21);
        const index = getU64(v, p);
        const term = getU64(v, p + 8);
        const t = v.getUint8(p + 16);
        const len = v.getUint32(p + 17, true);
        p += 21;
        need(len);
        if (t > 1) throw new RangeError(`entry type ${t}`);
        entries.push({ index, term, type: t === 1 ? 'membership' : 'normal', data: body.slice(p, p + len) });
        p += len;
      }
      return { type, group, entries };
    }
    case RecordType.HardState: {
      need(18);
      const term = getU64(v, p);
      const commit = getU64(v, p + 8);
      const voteLen = v.getUint16(p + 16, true);
      p += 18;
      need(voteLen);
      return { type, group, hardState: { term, commit, vote: decoder.decode(body.subarray(p, p + voteLen)) } };
    }
    case RecordType.Install:
      need(16);
      return { type, group, index: getU64(v, p), term: getU64(v, p + 8) };
    case RecordType.Drop:
      if (p !== body.byteLength) throw new RangeError('a drop record with a payload');
      return { type, group };
    default:
      throw new RangeError(`record type ${type}`);
  }
}
