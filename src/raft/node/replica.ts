/**
 * One replica of one group on this node: the host side of the core's Ready/advance contract (docs/raft.md), with
 * the group's state machine. It persists through the node's shared write-ahead log (group commit: every group's
 * Ready of one turn shares one fdatasync), sends through the node's transport, applies committed entries in order,
 * and wakes the requests waiting for them.
 *
 * Order per Ready: `messages` leave at once; the snapshot, entries and hard state are made durable; only then do
 * `messagesAfterPersist` (votes, acknowledgements) leave, committed entries apply, and the core is advanced. A
 * replica whose disk fails or whose state machine throws stops for good (`failed`): it never advances past what it
 * could not persist or apply, so it can neither acknowledge what is not on disk nor diverge.
 */
import { DiskFailedError, RebalancerError, SessionExpiredError, StateMachineError } from '../../errors.js';
import { Core, type Ready, type Role } from '../core.js';
import type { CoreOptions } from '../options.js';
import type { Entry, Message, NodeId, ReadState, Snapshot, SnapshotMeta } from '../messages.js';
import type { GroupStorage } from '../wal/wal.js';
import { Applier, type Applied, type Codec, type StateMachine } from './state-machine.js';

export interface ReplicaOptions {
  readonly nodeId: NodeId;
  readonly groupId: string;
  readonly storage: GroupStorage;
  readonly stateMachine: StateMachine<unknown, unknown, unknown, unknown>;
  readonly codec: Codec;
  readonly maxSessions: number;
  /** Compact the log once this many entries were applied since the last snapshot. */
  readonly snapshotEntries: number;
  /** The core's options except id, storage and applied. */
  readonly core: Omit<CoreOptions, 'id' | 'storage' | 'applied'>;
  readonly send: (m: Message) => void;
  /** A leader or role change, a failure: the node turns these into events. */
  readonly onChange: (r: Replica) => void;
  readonly onError: (error: RebalancerError, context: string) => void;
  /** @internal The simulator's invariant checker (RaftNodeIo.observer); never set in production. */
  readonly observer?: ReplicaObserver | undefined;
}

/**
 * @internal What the simulator's invariant checker sees of a replica (src/sim/raft.ts): the core once it is built
 * (its log as recovered), every Ready once it is durable (before its entries apply), every entry applied, every
 * snapshot loaded.
 */
export interface ReplicaObserver {
  opened(groupId: string, core: Core): void;
  ready(groupId: string, nodeId: NodeId, rd: Ready): void;
  applied(groupId: string, nodeId: NodeId, entry: Entry): void;
  restored(groupId: string, nodeId: NodeId, meta: SnapshotMeta, how: 'restart' | 'install'): void;
}

interface Waiter<T> {
  resolve(value: T): void;
  reject(error: unknown): void;
}

export class Replica {
  readonly groupId: string;
  /** `raft group <id>`, for messages (built once: applying an entry names it). */
  readonly #where: string;
  readonly core: Core;
  readonly #o: ReplicaOptions;
  readonly #applier: Applier<unknown>;
  /** A persist is on its way to disk: the next Ready waits. */
  #busy = false;
  /** A process() is queued for after the current turn (step). */
  #processQueued = false;
  #compacting = false;
  #closed = false;
  /** Why this replica stopped for good (disk or state machine), if it did. */
  failed: RebalancerError | undefined;
  #role: Role = 'follower';
  #lead: NodeId = '';
  /** Ticks since the last proposal or read here (a leader quiesces an idle group). */
  idleTicks = 0;
  /** Several waiters per (session, seq): a remote client's retry may reach this replica while its first try waits. */
  readonly #commands = new Map<string, Waiter<unknown>[]>();
  readonly #registers = new Map<string, Waiter<number>>();
  readonly #reads = new Map<string, Waiter<number>>();
  /** Waiting for the applied index to reach `index`, in no particular order (few at a time). */
  #appliedWaiters: { index: number; w: Waiter<void> }[] = [];
  /** Called on every leader change (clients retry then). */
  readonly #leaderListeners = new Set<() => void>();
  /** Disk writes on their way (a persist, a compaction): close() waits for them before the log closes. */
  readonly #inflight = new Set<Promise<unknown>>();
  /** Counts, for status and benchmarks. */
  readonly counts = { applied: 0, persists: 0, snapshotsTaken: 0, snapshotsInstalled: 0 };

  constructor(o: ReplicaOptions) {
    this.#o = o;
    this.groupId = o.groupId;
    this.#where = `raft group ${o.groupId}`;
    this.#applier = new Applier(o.stateMachine, o.codec, o.maxSessions);
    const snap = o.storage.snapshot();
    this.#restore(snap);
    this.core = new Core({ ...o.core, id: o.nodeId, storage: o.storage, applied: snap.meta.index });
    o.observer?.opened(o.groupId, this.core);
    if (snap.meta.index > 0) o.observer?.restored(o.groupId, o.nodeId, snap.meta, 'restart');
  }

  get role(): Role {
    return this.#role;
  }
  get lead(): NodeId {
    return this.#lead;
  }
  get applied(): number {
    return this.#applier.index;
  }
  get snapshotIndex(): number {
    return this.#o.storage.snapshot().meta.index;
  }
  get sessions(): number {
    return this.#applier.sessionCount;
  }

  // ---- driven by the node ----

  tick(): void {
    if (this.#stopped()) return;
    this.idleTicks++;
    this.core.tick();
    this.process();
  }

  step(m: Message): void {
    if (this.#stopped()) return;
    // A request forwarded by a follower is activity too: a leader does not quiesce under forwarded load.
    if (m.type === 'propose' || m.type === 'readIndex') this.idleTicks = 0;
    this.core.step(m);
    // Not per message: the transport hands over a whole frame at once (often several messages of this group:
    // appends, answers), and one Ready then covers them all.
    this.processSoon();
  }

  /**
   * process() once the current turn's synchronous work and the promise callbacks queued so far are done: messages
   * stepped and proposals made in one turn (a frame's messages; the clients woken by one apply proposing their next
   * commands) then share one Ready — one persist, one append per follower (merged), one apply — instead of one each.
   */
  processSoon(): void {
    if (this.#processQueued) return;
    this.#processQueued = true;
    queueMicrotask(() => {
      this.#processQueued = false;
      this.process();
    });
  }

  #stopped(): boolean {
    return this.#closed || this.failed !== undefined;
  }

  /** Handle every Ready the core has; a persist in flight defers the rest to its completion. */
  process(): void {
    while (!this.#busy && !this.#stopped() && this.core.hasReady()) {
      const rd = this.core.ready();
      for (const m of rd.messages) this.#o.send(m);
      const durable = rd.snapshot !== undefined || rd.entries.length > 0 || (rd.hardState !== undefined && rd.mustSync);
      if (!durable) {
        // A commit index alone need not be durable (it is learned again from the leader after a restart).
        this.#finish(rd);
        continue;
      }
      // Committed entries are on a majority's disks already (a leader counts itself only once its own write is
      // done): apply them now rather than after this Ready's new entries are written here, which would add a whole
      // fsync to every answer while proposals keep coming. Not with a snapshot: that is restored first, once durable.
      if (rd.snapshot === undefined && rd.committedEntries.length > 0) {
        if (!this.#applyCommitted(rd)) return;
        this.#wakeApplied();
      }
      this.#busy = true;
      this.#track(
        this.#o.storage.persist({ hardState: rd.hardState, entries: rd.entries, snapshot: rd.snapshot }).then(
          () => {
            this.#busy = false;
            this.counts.persists++;
            if (this.#stopped()) return;
            this.#finish(rd);
            this.process();
          },
          (err: unknown) => {
            this.#busy = false;
            if (this.#closed) return;
            this.#fail(
              err instanceof RebalancerError
                ? err
                : new DiskFailedError(`raft group ${this.groupId}: persisting failed; the node stops acknowledging`, {
                    cause: err,
                  }),
            );
          },
        ),
      );
      return;
    }
  }

  #finish(rd: Ready): void {
    // The checker sees a Ready once it is durable: a leadership or entries a crash erased before then never were.
    this.#o.observer?.ready(this.groupId, this.#o.nodeId, rd);
    if (rd.snapshot !== undefined) {
      if (!this.#guard(rd.snapshot.meta.index, 'restoring a snapshot', () => this.#restore(rd.snapshot!))) return;
      this.#o.observer?.restored(this.groupId, this.#o.nodeId, rd.snapshot.meta, 'install');
      this.counts.snapshotsInstalled++;
    }
    for (const m of rd.messagesAfterPersist) this.#o.send(m);
    if (!this.#applyCommitted(rd)) return;
    for (const rs of rd.readStates) this.#readState(rs);
    this.core.advance();
    this.#wakeApplied();
    if (rd.role !== this.#role || rd.lead !== this.#lead) {
      this.#role = rd.role;
      this.#lead = rd.lead;
      for (const fn of [...this.#leaderListeners]) fn();
      this.#o.onChange(this);
    }
    this.#maybeCompact();
  }

  /** Apply the Ready's committed entries not applied yet; false when one failed (the replica has stopped). */
  #applyCommitted(rd: Ready): boolean {
    for (const e of rd.committedEntries) {
      // Already applied: before the Ready's persist, or covered by a snapshot installed in this Ready.
      if (e.index <= this.#applier.index) continue;
      // #guard's rule, without a closure per entry: a throw stops the replica, the entry is never skipped.
      try {
        this.#apply(e);
      } catch (err) {
        this.#fail(new StateMachineError(this.groupId, e.index, 'applying a command', { cause: err }));
        return false;
      }
    }
    return true;
  }

  /** Run `fn`; a throw stops the replica (the entry is never skipped: replicas must not diverge). */
  #guard(index: number, what: string, fn: () => void): boolean {
    try {
      fn();
      return true;
    } catch (err) {
      this.#fail(new StateMachineError(this.groupId, index, what, { cause: err }));
      return false;
    }
  }

  #restore(snap: Snapshot): void {
    this.#applier.restore(snap.meta.index, snap.data, this.#where);
  }

  #apply(e: Entry): void {
    this.#o.observer?.applied(this.groupId, this.#o.nodeId, e);
    if (e.type !== 'normal') {
      this.#applier.skip(e.index, this.#where);
    } else {
      this.#dispatch(this.#applier.apply(e.index, e.data, this.#where));
    }
    this.counts.applied++;
  }

  #dispatch(a: Applied): void {
    switch (a.kind) {
      case 'registered': {
        const w = this.#registers.get(a.nonce);
        this.#registers.delete(a.nonce);
        w?.resolve(a.session);
        return;
      }
      case 'result': {
        const key = commandKey(a.session, a.seq);
        const ws = this.#commands.get(key);
        this.#commands.delete(key);
        for (const w of ws ?? []) w.resolve(a.result);
        return;
      }
      case 'expired': {
        const key = commandKey(a.session, a.seq);
        const ws = this.#commands.get(key);
        this.#commands.delete(key);
        for (const w of ws ?? [])
          w.reject(
            new SessionExpiredError(
              String(a.session),
              `raft group ${this.groupId}: client session ${a.session} was evicted (more than maxSessions clients ` +
                'since it was last used); the command was not applied. Retry it: a new session is opened',
            ),
          );
        return;
      }
      default:
        return;
    }
  }

  #readState(rs: ReadState): void {
    const w = this.#reads.get(rs.ctx);
    this.#reads.delete(rs.ctx);
    w?.resolve(rs.index);
  }

  #wakeApplied(): void {
    if (this.#appliedWaiters.length === 0) return;
    const applied = this.#applier.index;
    const keep: { index: number; w: Waiter<void> }[] = [];
    for (const x of this.#appliedWaiters) {
      if (x.index <= applied) x.w.resolve();
      else keep.push(x);
    }
    this.#appliedWaiters = keep;
  }

  #maybeCompact(): void {
    const applied = this.#applier.index;
    if (this.#compacting || applied - this.#o.storage.snapshot().meta.index < this.#o.snapshotEntries) return;
    const membership = this.core.membershipAt(applied);
    // No voters: a replica that joined empty and has applied entries from before the first membership entry it
    // received. Their real membership was the group's bootstrap, which this replica never knew: a snapshot must not
    // record (and hand on) an empty one. It compacts once a membership entry is applied.
    if (membership.voters.length === 0) return;
    this.#compacting = true;
    const data = this.#applier.snapshot();
    this.#track(
      this.#o.storage.compact(applied, membership, data).then(
        () => {
          this.#compacting = false;
          this.counts.snapshotsTaken++;
        },
        (err: unknown) => {
          this.#compacting = false;
          if (this.#closed) return;
          if (err instanceof DiskFailedError) this.#fail(err);
          else this.#o.onError(err as RebalancerError, `raft group ${this.groupId}: compacting the log`);
        },
      ),
    );
  }

  #fail(error: RebalancerError): void {
    if (this.failed !== undefined) return;
    this.failed = error;
    this.#o.onError(error, `raft group ${this.groupId} stopped`);
    this.#rejectAll(error);
    this.#o.onChange(this);
  }

  #rejectAll(error: unknown): void {
    for (const ws of this.#commands.values()) for (const w of ws) w.reject(error);
    for (const w of this.#registers.values()) w.reject(error);
    for (const w of this.#reads.values()) w.reject(error);
    for (const x of this.#appliedWaiters) x.w.reject(error);
    this.#commands.clear();
    this.#registers.clear();
    this.#reads.clear();
    this.#appliedWaiters = [];
    for (const fn of [...this.#leaderListeners]) fn();
  }

  #track(p: Promise<unknown>): void {
    this.#inflight.add(p);
    void p.finally(() => this.#inflight.delete(p));
  }

  /** Stop: pending requests fail with `error`; resolves once no disk write of this replica is on its way. */
  async close(error: unknown): Promise<void> {
    this.#closed = true;
    this.#rejectAll(error);
    await Promise.allSettled([...this.#inflight]);
  }

  // ---- used by the group's client side ----

  /** Throws the reason this replica cannot serve (closed or failed). */
  check(closedError: () => unknown): void {
    if (this.failed !== undefined) throw this.failed;
    if (this.#closed) throw closedError();
  }

  /**
   * Wait for the result of (session, seq); the caller proposes (and re-proposes) the entry, and calls `cancel` when
   * it stops waiting (its deadline). Several callers may wait for the same command (a remote client's retries).
   */
  waitCommand(session: number, seq: number): { readonly promise: Promise<unknown>; cancel(): void } {
    const key = commandKey(session, seq);
    let waiter: Waiter<unknown> | undefined;
    const promise = new Promise<unknown>((resolve, reject) => {
      waiter = { resolve, reject };
      const ws = this.#commands.get(key);
      if (ws === undefined) this.#commands.set(key, [waiter]);
      else ws.push(waiter);
    });
    return {
      promise,
      cancel: () => {
        const ws = this.#commands.get(key);
        if (ws === undefined) return;
        const rest = ws.filter((w) => w !== waiter);
        if (rest.length === 0) this.#commands.delete(key);
        else this.#commands.set(key, rest);
      },
    };
  }

  waitRegister(nonce: string): Promise<number> {
    return new Promise((resolve, reject) => this.#registers.set(nonce, { resolve, reject }));
  }

  forgetRegister(nonce: string): void {
    this.#registers.delete(nonce);
  }

  waitRead(ctx: string): Promise<number> {
    return new Promise((resolve, reject) => this.#reads.set(ctx, { resolve, reject }));
  }

  forgetRead(ctx: string): void {
    this.#reads.delete(ctx);
  }

  /**
   * Resolves once the applied index reaches `index`. A caller that stops waiting (its deadline) calls the returned
   * `cancel`, so that a replica that never catches up does not collect waiters.
   */
  waitApplied(index: number): { readonly promise: Promise<void>; cancel(): void } {
    if (index <= this.#applier.index) return { promise: Promise.resolve(), cancel: () => undefined };
    let entry: { index: number; w: Waiter<void> } | undefined;
    const promise = new Promise<void>((resolve, reject) => {
      entry = { index, w: { resolve, reject } };
      this.#appliedWaiters.push(entry);
    });
    return {
      promise,
      cancel: () => {
        this.#appliedWaiters = this.#appliedWaiters.filter((x) => x !== entry);
      },
    };
  }

  /** Call `fn` on every leader (or role) change, and when the replica stops; returns the unsubscribe. */
  onLeaderChange(fn: () => void): () => void {
    this.#leaderListeners.add(fn);
    return () => this.#leaderListeners.delete(fn);
  }

  /** The state machine's snapshot() of the state applied here (no session table). */
  stateSnapshot(): Uint8Array {
    return this.#applier.stateSnapshot();
  }

  /** Run a query on the local state (already known to be fresh enough by the caller). */
  query(q: unknown): unknown {
    return this.#applier.query(q);
  }
}

const commandKey = (session: number, seq: number): string => `${session}:${seq}`;
