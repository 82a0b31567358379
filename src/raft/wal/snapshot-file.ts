/**
 * A snapshot file: `u32 magic "RSNP" · u32 crc32(everything after it) · u32 headerLength · header (JSON, UTF-8:
 * group, index, term, membership, kind) · the state machine's bytes`. Written to a temporary name, fsynced,
 * renamed, and the directory fsynced: a reader sees the old snapshot or the new one, never a part.
 */
import { zlib32 } from './crc.js';
import type { Membership, Snapshot } from '../messages.js';

const MAGIC = 0x504e5352; // "RSNP" little-endian
const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** How the snapshot came: installed from the leader (it replaced the log), or taken by the host (compaction). */
export type SnapshotKind = 'install' | 'compact';

export interface SnapshotFile {
  readonly group: string;
  readonly kind: SnapshotKind;
  readonly snapshot: Snapshot;
}

export function encodeSnapshotFile(f: SnapshotFile): Uint8Array {
  const { meta, data } = f.snapshot;
  const header = encoder.encode(
    JSON.stringify({ group: f.group, kind: f.kind, index: meta.index, term: meta.term, membership: meta.membership }),
  );
  const out = new Uint8Array(12 + header.byteLength + data.byteLength);
  const v = new DataView(out.buffer);
  v.setUint32(0, MAGIC, true);
  v.setUint32(8, header.byteLength, true);
  out.set(header, 12);
  out.set(data, 12 + header.byteLength);
  v.setUint32(4, zlib32(out.subarray(8)), true);
  return out;
}

/** The snapshot in a file, or a sentence saying why it is not one. */
export function decodeSnapshotFile(bytes: Uint8Array): SnapshotFile | string {
  if (bytes.byteLength < 12) return 'shorter than its header';
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.getUint32(0, true) !== MAGIC) return 'not a snapshot file (bad magic number)';
  if (zlib32(bytes.subarray(8)) !== v.getUint32(4, true)) return 'a checksum mismatch';
  const len = v.getUint32(8, true);
  if (12 + len > bytes.byteLength) return 'a header longer than the file';
  try {
    const h = JSON.parse(decoder.decode(bytes.subarray(12, 12 + len))) as {
      group: string;
      kind: SnapshotKind;
      index: number;
      term: number;
      membership: Membership;
    };
    return {
      group: h.group,
      kind: h.kind,
      snapshot: {
        meta: { index: h.index, term: h.term, membership: h.membership },
        data: bytes.slice(12 + len),
      },
    };
  } catch (e) {
    return `an unreadable header (${(e as Error).message})`;
  }
}
