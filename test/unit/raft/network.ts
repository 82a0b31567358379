/**
 * A small in-test world for Raft cores: each replica has a MemoryStorage (its "disk") and a list of applied
 * entries (its state machine); messages go through one queue that tests can filter, drop, reorder or hold.
 * A Ready is handled as a host must: persist (snapshot, entries, hard state), then send, then apply, then advance.
 */
import {
  Core,
  MemoryStorage,
  type CoreOptions,
  type Entry,
  type Message,
  type NodeId,
} from '../../../src/raft/index.js';

const enc = new TextEncoder();
const dec = new TextDecoder();

export const bytes = (s: string): Uint8Array => enc.encode(s);
export const text = (b: Uint8Array): string => dec.decode(b);

/** A deterministic random source (mulberry32). */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface Replica {
  id: NodeId;
  core: Core;
  storage: MemoryStorage;
  /** Every committed entry applied, in order (a snapshot install replaces the prefix it covers). */
  applied: Entry[];
  /** The state machine: the data of the normal, non-empty entries applied. */
  state: string[];
  readStates: { ctx: string; index: number }[];
  /** When true, Readies are not handled (a stalled disk). */
  stalled: boolean;
}

export type CoreOverrides = Partial<Omit<CoreOptions, 'id' | 'storage'>>;

export class Net {
  readonly replicas = new Map<NodeId, Replica>();
  /** Messages sent and not yet delivered. */
  queue: Message[] = [];
  /** Return false to drop a message (called on delivery). */
  filter: (m: Message) => boolean = () => true;
  readonly #cut = new Set<string>();
  readonly #opts: CoreOverrides;
  #seed: number;
  /** Every message ever sent (for assertions). */
  readonly sent: Message[] = [];

  constructor(voters: readonly NodeId[], opts: CoreOverrides = {}, seed = 1) {
    this.#opts = opts;
    this.#seed = seed;
    for (const id of voters) this.add(id, new MemoryStorage({ voters, learners: [] }));
  }

  /** Add a replica with `storage` (a new MemoryStorage with an empty membership for one added later). */
  add(id: NodeId, storage: MemoryStorage, opts: CoreOverrides = {}): Replica {
    const snap = storage.snapshot();
    const state = snap.data.byteLength > 0 ? (JSON.parse(text(snap.data)) as string[]) : [];
    const core = new Core({
      id,
      storage,
      random: seeded(this.#seed++ * 7919),
      electionTicks: 10,
      heartbeatTicks: 1,
      ...this.#opts,
      ...opts,
      applied: snap.meta.index,
    });
    const r: Replica = { id, core, storage, applied: [], state, readStates: [], stalled: false };
    this.replicas.set(id, r);
    return r;
  }

  get(id: NodeId): Replica {
    const r = this.replicas.get(id);
    if (!r) throw new Error(`no replica ${id}`);
    return r;
  }

  core(id: NodeId): Core {
    return this.get(id).core;
  }

  /**
   * A crash and restart: the core is rebuilt from what its storage holds (every handled Ready is durable).
   * Messages already on the wire, to or from it, may still arrive.
   */
  restart(id: NodeId, opts: CoreOverrides = {}): Replica {
    const old = this.get(id);
    const r = this.add(id, old.storage, opts);
    // Re-applying from the snapshot: the applied history restarts at the snapshot (tests compare prefixes).
    r.applied = old.applied.filter((e) => e.index <= old.storage.snapshot().meta.index);
    return r;
  }

  cut(a: NodeId, b: NodeId): void {
    this.#cut.add(`${a}>${b}`).add(`${b}>${a}`);
  }

  isolate(id: NodeId): void {
    for (const other of this.replicas.keys()) if (other !== id) this.cut(id, other);
  }

  heal(): void {
    this.#cut.clear();
  }

  /** Handle every replica's Ready until none has one. */
  flushReadies(): void {
    for (let round = 0; round < 1000; round++) {
      let any = false;
      for (const r of this.replicas.values()) {
        if (r.stalled || !r.core.hasReady()) continue;
        any = true;
        this.handleReady(r);
      }
      if (!any) return;
    }
    throw new Error('Readies did not settle');
  }

  handleReady(r: Replica): void {
    const rd = r.core.ready();
    if (rd.snapshot) {
      r.storage.applySnapshot(rd.snapshot);
      r.state = rd.snapshot.data.byteLength > 0 ? (JSON.parse(text(rd.snapshot.data)) as string[]) : [];
      r.applied = r.applied.filter((e) => e.index <= rd.snapshot!.meta.index);
    }
    r.storage.append(rd.entries);
    if (rd.hardState) r.storage.setHardState(rd.hardState);
    for (const m of [...rd.messages, ...rd.messagesAfterPersist]) {
      this.queue.push(m);
      this.sent.push(m);
    }
    for (const e of rd.committedEntries) {
      r.applied.push(e);
      if (e.type === 'normal' && e.data.byteLength > 0) r.state.push(text(e.data));
    }
    r.readStates.push(...rd.readStates);
    r.core.advance();
  }

  /** Deliver one message now (unless cut or filtered); false when it was dropped. */
  deliver(m: Message): boolean {
    if (this.#cut.has(`${m.from}>${m.to}`) || !this.filter(m)) return false;
    const r = this.replicas.get(m.to);
    if (!r) return false;
    r.core.step(m);
    return true;
  }

  /** Deliver the queued messages once (new ones wait for the next call). */
  deliverOnce(): number {
    const batch = this.queue;
    this.queue = [];
    let n = 0;
    for (const m of batch) if (this.deliver(m)) n++;
    return n;
  }

  /** Deliver and handle Readies until the network is quiet. */
  stabilize(maxRounds = 10_000): void {
    this.flushReadies();
    for (let i = 0; i < maxRounds; i++) {
      if (this.queue.length === 0) return;
      this.deliverOnce();
      this.flushReadies();
    }
    throw new Error('the network did not settle');
  }

  /** Tick every replica (or those listed) `n` times, stabilizing after each tick. */
  tick(n = 1, ids: readonly NodeId[] = [...this.replicas.keys()]): void {
    for (let i = 0; i < n; i++) {
      for (const id of ids) this.get(id).core.tick();
      this.stabilize();
    }
  }

  /** Make `id` campaign and settle. */
  elect(id: NodeId): void {
    this.get(id).core.campaign();
    this.stabilize();
  }

  leaders(): Core[] {
    return [...this.replicas.values()].map((r) => r.core).filter((c) => c.role === 'leader');
  }

  propose(id: NodeId, data: string): void {
    const out = this.core(id).propose(bytes(data));
    if (!out.ok) throw new Error(`proposal dropped: ${out.reason}: ${out.detail}`);
  }

  /** The state machine's applied commands of a replica. */
  stateOf(id: NodeId): string[] {
    return this.get(id).state;
  }

  /** A replica's whole log as term list (index → term), from its storage and the core. */
  logTerms(id: NodeId): number[] {
    const c = this.core(id);
    const out: number[] = [];
    for (let i = c.log.firstIndex(); i <= c.log.lastIndex(); i++) out.push(c.log.term(i)!);
    return out;
  }
}

/** Build a storage holding `terms` (entry i + 1 has terms[i]) and a hard state at `term`. */
export function storageWith(voters: readonly NodeId[], terms: readonly number[], term: number): MemoryStorage {
  const s = new MemoryStorage({ voters, learners: [] });
  s.append(terms.map((t, i) => ({ term: t, index: i + 1, type: 'normal' as const, data: bytes(`e${i + 1}t${t}`) })));
  s.setHardState({ term, vote: '', commit: 0 });
  return s;
}
