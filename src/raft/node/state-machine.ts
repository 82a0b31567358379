/**
 * A user's replicated state machine, and what makes its commands apply exactly once (docs/raft.md, "State
 * machines").
 *
 * Every replica applies every committed entry to its own copy of the state, so any replica can answer the client
 * that proposed a command: the node that proposed it waits until it applies the entry itself and hands over the
 * result it computed. Commands are deduplicated by (client session, sequence number), the scheme of the Raft
 * dissertation §6.3: a session is created by a `register` entry and named by that entry's log index (so a
 * retried registration creates an unused session, never a shared one); each command carries its sequence number
 * and the lowest sequence number its client still waits for, below which the results are forgotten. A command
 * retried after a leader change, or proposed twice by a client's retry, is applied once and answered twice.
 *
 * Everything here is deterministic and depends only on the log: every replica evicts the same sessions at the same
 * index and reaches the same state.
 */
import { CorruptDataError, InvalidArgumentError, invariant } from '../../errors.js';

/**
 * What a user defines (the shape of rafted_value). It must be deterministic: the same commands in the same order
 * give the same states and results on every replica. It must not throw (return a result saying "refused"): a
 * throw stops the replica from applying (StateMachineError), it never skips the entry.
 */
export interface StateMachine<S, C, Q, R, A = unknown> {
  /** The state of a new group. */
  initial(): S;
  /** Apply a command; `state` may be mutated and returned, or a new one returned. */
  command(state: S, command: C): { readonly state: S; readonly result: R };
  /** Answer a query; must not change the state. */
  query(state: S, query: Q): A;
  /** The state as bytes (for log compaction and for replicas that fell behind). */
  snapshot(state: S): Uint8Array;
  /** The state from snapshot() bytes. */
  restore(bytes: Uint8Array): S;
}

/** How commands and results become bytes in the log (default: JSON; values must survive JSON.stringify). */
export interface Codec {
  encode(value: unknown): Uint8Array;
  decode(bytes: Uint8Array): unknown;
}

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });

export const jsonCodec: Codec = {
  encode: (v) => enc.encode(JSON.stringify(v === undefined ? null : v)),
  decode: (b) => JSON.parse(dec.decode(b)) as unknown,
};

// ---- entries --------------------------------------------------------------------------------------------------

/** The first byte of a normal entry's payload. An empty payload is a leader's no-op. */
const KIND_REGISTER = 1;
const KIND_COMMAND = 2;
/** kind(1) + session(8) + seq(8) + lowest waited(8). */
const COMMAND_HEADER_BYTES = 25;
export const NONCE_BYTES = 16;

export type DecodedEntry =
  | { readonly kind: 'noop' }
  | { readonly kind: 'register'; readonly nonce: string }
  | {
      readonly kind: 'command';
      readonly session: number;
      readonly seq: number;
      readonly lowest: number;
      readonly payload: Uint8Array;
    };

export function encodeRegister(nonce: Uint8Array): Uint8Array {
  invariant(nonce.byteLength === NONCE_BYTES, 'a client nonce is 16 bytes');
  const out = new Uint8Array(1 + NONCE_BYTES);
  out[0] = KIND_REGISTER;
  out.set(nonce, 1);
  return out;
}

export function encodeCommand(session: number, seq: number, lowest: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(COMMAND_HEADER_BYTES + payload.byteLength);
  const view = new DataView(out.buffer);
  out[0] = KIND_COMMAND;
  view.setFloat64(1, session);
  view.setFloat64(9, seq);
  view.setFloat64(17, lowest);
  out.set(payload, COMMAND_HEADER_BYTES);
  return out;
}

export const commandOverheadBytes = COMMAND_HEADER_BYTES;

const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

/** Decode a normal entry's payload; a payload that is none of ours is corrupt data (never applied). */
export function decodeEntry(data: Uint8Array, where: string): DecodedEntry {
  if (data.byteLength === 0) return { kind: 'noop' };
  if (data[0] === KIND_REGISTER && data.byteLength === 1 + NONCE_BYTES) {
    return { kind: 'register', nonce: hex(data.subarray(1)) };
  }
  if (data[0] === KIND_COMMAND && data.byteLength >= COMMAND_HEADER_BYTES) {
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const session = view.getFloat64(1);
    const seq = view.getFloat64(9);
    const lowest = view.getFloat64(17);
    if (isCount(session) && isCount(seq) && isCount(lowest)) {
      return { kind: 'command', session, seq, lowest, payload: data.subarray(COMMAND_HEADER_BYTES) };
    }
  }
  throw new CorruptDataError(`${where}: an entry of ${data.byteLength} bytes is not a Rebalancer raft entry`, {
    key: where,
    expected: 'a register or command entry',
  });
}

function isCount(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 0;
}

// ---- sessions and the applier ---------------------------------------------------------------------------------

interface Session {
  /** Results of applied commands the client may still ask for (seq ≥ lowest). */
  readonly results: Map<number, unknown>;
  /** Every seq below it was answered to the client: its result is forgotten, a retry of it is ignored. */
  lowest: number;
  /** The index of the last entry that used the session (least recently used goes first). */
  lastIndex: number;
}

function snapshotData(smBytes: Uint8Array, sessionBytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(8 + smBytes.byteLength + sessionBytes.byteLength);
  new DataView(out.buffer).setFloat64(0, smBytes.byteLength);
  out.set(smBytes, 8);
  out.set(sessionBytes, 8 + smBytes.byteLength);
  return out;
}

/**
 * A replica snapshot's bytes holding the state machine state `smBytes` (its snapshot() format) and no client
 * session: what a group seeded from another group's state starts from (RaftNode.seedGroup). Sessions are left out
 * because their ids are log indexes of the other group's log, which mean nothing in the new one.
 */
export function seedSnapshotData(smBytes: Uint8Array, codec: Codec): Uint8Array {
  return snapshotData(smBytes, codec.encode([]));
}

/** What applying one entry produced, for the node that waits for it. */
export type Applied =
  | { readonly kind: 'noop' }
  | { readonly kind: 'registered'; readonly nonce: string; readonly session: number }
  | { readonly kind: 'result'; readonly session: number; readonly seq: number; readonly result: unknown }
  /** The session is unknown (evicted, or never registered): the command was not applied. */
  | { readonly kind: 'expired'; readonly session: number; readonly seq: number }
  /** A retry of a command whose answer the client already had: nothing to do. */
  | { readonly kind: 'ignored' };

/**
 * The state machine's state plus the session table: what every replica holds for one group, changed only by
 * apply() and restore(), in log order.
 */
export class Applier<S> {
  readonly #sm: StateMachine<S, unknown, unknown, unknown>;
  readonly #codec: Codec;
  readonly #maxSessions: number;
  readonly #sessions = new Map<number, Session>();
  state: S;
  /** The last index applied. */
  index = 0;

  constructor(sm: StateMachine<S, unknown, unknown, unknown>, codec: Codec, maxSessions: number) {
    this.#sm = sm;
    this.#codec = codec;
    this.#maxSessions = maxSessions;
    this.state = sm.initial();
  }

  get sessionCount(): number {
    return this.#sessions.size;
  }

  /** Apply the entry at `index` (normal entries only; the caller skips membership entries but reports them here). */
  apply(index: number, data: Uint8Array | undefined, where: string): Applied {
    invariant(index === this.index + 1, () => `${where}: applying entry ${index} after ${this.index}`);
    const applied = this.#apply(index, data, where);
    // Only once it applied: a command that threw leaves the index where it was (the replica stops there).
    this.index = index;
    return applied;
  }

  #apply(index: number, data: Uint8Array | undefined, where: string): Applied {
    if (data === undefined) return { kind: 'noop' };
    const e = decodeEntry(data, where);
    switch (e.kind) {
      case 'noop':
        return e;
      case 'register': {
        this.#sessions.set(index, { results: new Map(), lowest: 0, lastIndex: index });
        this.#evict();
        return { kind: 'registered', nonce: e.nonce, session: index };
      }
      case 'command': {
        const s = this.#sessions.get(e.session);
        if (s === undefined) return { kind: 'expired', session: e.session, seq: e.seq };
        // LRU order: re-insert so that Map iteration order is least recently used first.
        this.#sessions.delete(e.session);
        this.#sessions.set(e.session, s);
        s.lastIndex = index;
        if (e.lowest > s.lowest) {
          for (const seq of s.results.keys()) if (seq < e.lowest) s.results.delete(seq);
          s.lowest = e.lowest;
        }
        if (e.seq < s.lowest) return { kind: 'ignored' };
        if (s.results.has(e.seq)) {
          return { kind: 'result', session: e.session, seq: e.seq, result: s.results.get(e.seq) };
        }
        const command = this.#codec.decode(e.payload);
        const out = this.#sm.command(this.state, command);
        if (out === null || typeof out !== 'object' || !('state' in out)) {
          throw new InvalidArgumentError('a state machine command() must return { state, result }');
        }
        this.state = out.state;
        s.results.set(e.seq, out.result);
        return { kind: 'result', session: e.session, seq: e.seq, result: out.result };
      }
    }
  }

  /** Note an entry that is not ours to apply (a membership change) so that indexes stay contiguous. */
  skip(index: number, where: string): void {
    invariant(index === this.index + 1, () => `${where}: skipping entry ${index} after ${this.index}`);
    this.index = index;
  }

  query(q: unknown): unknown {
    return this.#sm.query(this.state, q);
  }

  /** Drop the least recently used sessions beyond the limit (deterministic: by log order). */
  #evict(): void {
    while (this.#sessions.size > this.#maxSessions) {
      const oldest = this.#sessions.keys().next().value as number;
      this.#sessions.delete(oldest);
    }
  }

  /** The bytes of a snapshot at `index`: the state machine's bytes and the session table. */
  snapshot(): Uint8Array {
    const sessions = [...this.#sessions].map(([id, s]) => [id, s.lowest, s.lastIndex, [...s.results]]);
    return snapshotData(this.#sm.snapshot(this.state), this.#codec.encode(sessions));
  }

  /** The state machine's own snapshot() of the applied state, without the session table. */
  stateSnapshot(): Uint8Array {
    return this.#sm.snapshot(this.state);
  }

  /** Replace everything with a snapshot's content (taken at `index`). */
  restore(index: number, bytes: Uint8Array, where: string): void {
    if (bytes.byteLength === 0 && index === 0) {
      this.state = this.#sm.initial();
      this.#sessions.clear();
      this.index = 0;
      return;
    }
    const bad = (detail: string, cause?: unknown): CorruptDataError =>
      new CorruptDataError(`${where}: the snapshot at ${index} cannot be read: ${detail}`, {
        key: where,
        expected: 'a Rebalancer raft snapshot',
        cause,
      });
    if (bytes.byteLength < 8) throw bad('it is shorter than its header');
    const smLength = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getFloat64(0);
    if (!Number.isSafeInteger(smLength) || smLength < 0 || 8 + smLength > bytes.byteLength) {
      throw bad('its header is wrong');
    }
    let sessions: unknown;
    try {
      sessions = this.#codec.decode(bytes.subarray(8 + smLength));
    } catch (err) {
      throw bad('its session table does not decode', err);
    }
    if (!Array.isArray(sessions)) throw bad('its session table is not a list');
    const table = new Map<number, Session>();
    for (const row of sessions as unknown[]) {
      if (!Array.isArray(row) || row.length !== 4 || !Array.isArray(row[3])) throw bad('a session row is malformed');
      const [id, lowest, lastIndex, results] = row as [number, number, number, [number, unknown][]];
      table.set(id, { lowest, lastIndex, results: new Map(results) });
    }
    this.state = this.#sm.restore(bytes.subarray(8, 8 + smLength));
    this.#sessions.clear();
    for (const [id, s] of table) this.#sessions.set(id, s);
    this.index = index;
  }
}
