/**
 * What waits to be sent to one peer (pure: no sockets; a simulated network can use it as is). Two queues: small
 * messages (heartbeats, appends, votes, answers) and bulk ones (snapshot chunks). A batch takes every small message
 * that fits in a frame and at most one bulk message, small ones first: a snapshot streaming to a peer delays a
 * heartbeat by at most one chunk. The queue is bounded by messages and by bytes: past either bound a message is
 * dropped (and counted) — Raft retransmits what is lost, so dropping is safe where growing without bound is not.
 */
import { FRAME_HEADER_BYTES } from './codec.js';

export interface PeerQueueLimits {
  /** Messages queued (both queues) before new ones are dropped. */
  readonly maxQueuedMessages: number;
  /** Encoded bytes queued (both queues) before new ones are dropped. */
  readonly maxQueuedBytes: number;
  /** The largest frame: a batch never exceeds it; a message that cannot fit alone is dropped. */
  readonly maxFrameBytes: number;
}

/** Bytes of a batch frame besides its envelopes: the frame header and the u32 count. */
export const BATCH_OVERHEAD_BYTES = FRAME_HEADER_BYTES + 4;

class Fifo {
  #items: Uint8Array[] = [];
  #head = 0;

  get size(): number {
    return this.#items.length - this.#head;
  }

  push(b: Uint8Array): void {
    this.#items.push(b);
  }

  peek(): Uint8Array | undefined {
    return this.#items[this.#head];
  }

  shift(): Uint8Array {
    const b = this.#items[this.#head]!;
    this.#items[this.#head++] = undefined as unknown as Uint8Array;
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return b;
  }

  clear(): void {
    this.#items = [];
    this.#head = 0;
  }
}

export interface PeerQueueStats {
  readonly queuedMessages: number;
  readonly queuedBytes: number;
  /** Messages dropped because the queue was full. */
  readonly droppedFull: number;
  /** Messages dropped because they could not fit in a frame of maxFrameBytes. */
  readonly droppedOversized: number;
}

export class PeerQueue {
  readonly #limits: PeerQueueLimits;
  readonly #small = new Fifo();
  readonly #bulk = new Fifo();
  #bytes = 0;
  #droppedFull = 0;
  #droppedOversized = 0;

  constructor(limits: PeerQueueLimits) {
    this.#limits = limits;
  }

  get size(): number {
    return this.#small.size + this.#bulk.size;
  }

  stats(): PeerQueueStats {
    return {
      queuedMessages: this.size,
      queuedBytes: this.#bytes,
      droppedFull: this.#droppedFull,
      droppedOversized: this.#droppedOversized,
    };
  }

  /** Queue one encoded envelope; false when it was dropped (queue full, or too large for any frame). */
  push(encoded: Uint8Array, bulk: boolean): boolean {
    const n = encoded.byteLength;
    if (n + BATCH_OVERHEAD_BYTES > this.#limits.maxFrameBytes) {
      this.#droppedOversized++;
      return false;
    }
    if (this.size + 1 > this.#limits.maxQueuedMessages || this.#bytes + n > this.#limits.maxQueuedBytes) {
      this.#droppedFull++;
      return false;
    }
    (bulk ? this.#bulk : this.#small).push(encoded);
    this.#bytes += n;
    return true;
  }

  /**
   * The next batch: small messages in order while they fit in one frame, then one bulk message if it fits too
   * (or if the batch is otherwise empty). `bulk` says whether it holds a bulk message. Undefined when empty.
   */
  nextBatch(): { readonly parts: Uint8Array[]; readonly bytes: number; readonly bulk: boolean } | undefined {
    if (this.size === 0) return undefined;
    const budget = this.#limits.maxFrameBytes - BATCH_OVERHEAD_BYTES;
    const parts: Uint8Array[] = [];
    let bytes = 0;
    for (let next = this.#small.peek(); next && bytes + next.byteLength <= budget; next = this.#small.peek()) {
      parts.push(this.#small.shift());
      bytes += next.byteLength;
    }
    let bulk = false;
    const chunk = this.#bulk.peek();
    if (chunk && bytes + chunk.byteLength <= budget) {
      parts.push(this.#bulk.shift());
      bytes += chunk.byteLength;
      bulk = true;
    }
    this.#bytes -= bytes;
    return { parts, bytes, bulk };
  }

  clear(): void {
    this.#small.clear();
    this.#bulk.clear();
    this.#bytes = 0;
  }
}
