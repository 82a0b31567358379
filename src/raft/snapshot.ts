/**
 * A follower's side of a snapshot streamed in chunks: chunks are taken in order, from one sender, for one snapshot;
 * anything else restarts or resumes the stream at the offset the follower names.
 */
import { invariant } from '../errors.js';
import type { NodeId, Snapshot, SnapshotMessage, SnapshotMeta } from './messages.js';

export class SnapshotReceiver {
  #current: { meta: SnapshotMeta; from: NodeId; parts: Uint8Array[]; received: number } | undefined;

  reset(): void {
    this.#current = undefined;
  }

  /** Take a chunk: the whole snapshot once its last chunk arrived, or else the offset to continue from. */
  receive(m: SnapshotMessage): { snapshot: Snapshot; offset: number } | { snapshot: undefined; offset: number } {
    if (m.offset === 0) this.#current = { meta: m.meta, from: m.from, parts: [], received: 0 };
    const c = this.#current;
    if (c === undefined || c.meta.index !== m.meta.index || c.meta.term !== m.meta.term || c.from !== m.from) {
      this.#current = undefined;
      return { snapshot: undefined, offset: 0 }; // another snapshot, or another sender: start again
    }
    if (c.received !== m.offset) return { snapshot: undefined, offset: c.received }; // lost or repeated chunk
    c.parts.push(m.data);
    c.received += m.data.byteLength;
    invariant(c.received <= m.totalBytes, 'a snapshot chunk runs past the end of the snapshot');
    if (c.received < m.totalBytes) return { snapshot: undefined, offset: c.received };
    this.#current = undefined;
    const data = new Uint8Array(c.received);
    let at = 0;
    for (const p of c.parts) {
      data.set(p, at);
      at += p.byteLength;
    }
    return { snapshot: { meta: c.meta, data }, offset: c.received };
  }
}
