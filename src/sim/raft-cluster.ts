/**
 * The Raft simulation's cluster (issue 13, item 5): N real `RaftNode`s — core, write-ahead log, transport, node
 * runtime — each on its own NodeClock (pause = SIGSTOP, kill = kill -9), a SimDisk behind a SlowDisk, the shared
 * SimNetwork, and MessageFaults on every send path. Every replica reports its Readies, applies and restores to the
 * invariant checker through the node's internal observer hook.
 *
 * A crash is a power loss: the node's clock dies (nothing of it runs again), its connections break, its disk loses
 * what was not synced and tears the last write. A restart is a new process on the same disk: RaftNode.start on a
 * fresh view of it, and openGroup again.
 */
import type { RaftMutants } from '../raft/mutants.js';
import type { Core } from '../raft/core.js';
import type { RaftGroup } from '../raft/node/group.js';
import { RaftNode } from '../raft/node/node.js';
import type { ReplicaObserver } from '../raft/node/replica.js';
import { SimDisk } from '../raft/wal/disk.js';
import { NodeClock } from './node-clock.js';
import { SlowDisk } from './raft-disk.js';
import type { MessageFaults } from './raft-faults.js';
import type { RaftInvariants } from './raft-invariants.js';
import type { KvCommand, KvQuery } from './raft-kv.js';
import { kvStateMachine } from './raft-kv.js';
import type { KvOutput } from './linearizability-models.js';
import { virtualTimers, type SimNetwork } from './raft-world.js';
import type { Random } from './random.js';
import type { SimWorld } from './world.js';

export type KvGroup = RaftGroup<KvCommand, KvQuery, KvOutput, string | null>;

/** The one group of the simulation. */
export const GROUP = 'kv';

export interface ClusterTiming {
  readonly tickMs: number;
  readonly electionTicks: number;
  readonly requestTimeoutMs: number;
  /** Each fdatasync takes this long (virtual ms) unless a fault slows the disk. */
  readonly syncMs: { readonly min: number; readonly max: number };
}

/** One incarnation of a node's process. */
export interface Incarnation {
  readonly n: number;
  readonly clock: NodeClock;
  readonly slow: SlowDisk;
  node: RaftNode | undefined;
  group: KvGroup | undefined;
  core: Core | undefined;
  /** Resolves when this process dies (clients waiting on it give up: their outcome is unknown). */
  readonly dead: Promise<void>;
  kill(): void;
  alive: boolean;
}

export interface SimNode {
  readonly id: string;
  readonly address: string;
  readonly disk: SimDisk;
  readonly random: Random;
  current: Incarnation;
  /** Up (started and not crashed). */
  up: boolean;
  /** The start in progress (up, its group not open yet), if any. */
  starting: Promise<void> | undefined;
}

export interface ClusterOptions {
  readonly world: SimWorld;
  readonly net: SimNetwork;
  readonly faults: MessageFaults;
  readonly invariants: RaftInvariants;
  readonly random: Random;
  readonly ids: readonly string[];
  readonly mutants: RaftMutants;
  readonly timing: ClusterTiming;
  readonly leaseReads: boolean;
  readonly maxInflightMessages: number;
  readonly trace: (line: string) => void;
}

const SECRET = 'rebalancer-simulation-secret';
const PORT = 7000;

export class SimCluster {
  readonly nodes: SimNode[];
  readonly #o: ClusterOptions;
  /** Nodes that could not start (a finding, like an invariant violation). */
  readonly failures: { atMs: number; kind: string; detail: string }[] = [];
  /** Message types a node's sends drop (a steered fault: a leader's replication cut, its votes not). */
  readonly muted = new Map<string, ReadonlySet<string>>();
  /** Node errors other than the expected ones of a crash (a replica's disk failing under a killed process). */
  readonly errors: string[] = [];

  constructor(o: ClusterOptions) {
    this.#o = o;
    this.nodes = o.ids.map((id) => {
      const random = o.random.fork();
      const disk = new SimDisk(() => random.next());
      const node: SimNode = {
        id,
        address: `${id}:${PORT}`,
        disk,
        random,
        current: this.#incarnation(disk, random, 0),
        up: false,
        starting: undefined,
      };
      return node;
    });
  }

  node(id: string): SimNode {
    const n = this.nodes.find((x) => x.id === id);
    if (n === undefined) throw new RangeError(`no simulated node ${id}`);
    return n;
  }

  /**
   * Start (or restart) a node's process; resolves once its group is open (whoever awaits it runs virtual time). A
   * node that cannot start — its log refuses to open, an assertion fails on what it recovered — is a finding: it
   * goes to `failures`, never thrown.
   */
  async start(n: SimNode): Promise<void> {
    const starting = this.#start(n);
    n.starting = starting;
    try {
      await starting;
    } catch (err) {
      this.failures.push({
        atMs: this.#o.world.now(),
        kind: 'node-failed',
        detail: `${n.id} could not start: ${err instanceof Error ? err.message : String(err)}`,
      });
    } finally {
      if (n.starting === starting) n.starting = undefined;
    }
  }

  async #start(n: SimNode): Promise<void> {
    const o = this.#o;
    // The first start uses the incarnation made with the node; a restart is a new process.
    const fresh = n.current.alive && n.current.node === undefined;
    const inc = fresh ? n.current : this.#incarnation(n.disk, n.random, n.current.n + 1);
    n.current = inc;
    n.up = true;
    const peers: Record<string, string> = {};
    for (const p of this.nodes) if (p !== n) peers[p.id] = p.address;
    const send = (
      to: string,
      groupId: string,
      message: Parameters<ReturnType<MessageFaults['sender']>>[2],
      deliver: () => void,
    ): void => {
      if (this.muted.get(n.id)?.has(message.type) === true) return;
      o.faults.sender(n.id, () => (deliver(), true), inc.clock)(to, groupId, message);
    };
    const node = await RaftNode.start({
      id: n.id,
      listen: n.address,
      peers,
      secret: SECRET,
      tickMs: o.timing.tickMs,
      electionTicks: o.timing.electionTicks,
      requestTimeoutMs: o.timing.requestTimeoutMs,
      io: {
        disk: inc.slow,
        network: o.net.node(n.address, inc.clock),
        timers: virtualTimers(inc.clock),
        clock: () => inc.clock.now(),
        random: () => n.random.next(),
        send,
        mutants: o.mutants,
        observer: this.#observer(inc),
      },
    });
    if (!inc.alive) return;
    inc.node = node;
    node.on('error', (e) => {
      // A killed process's last disk write fails under it: expected. Anything else is worth a look in the trace.
      if (inc.alive) this.errors.push(`${n.id}: ${e.error instanceof Error ? e.error.message : String(e.error)}`);
    });
    inc.group = node.openGroup(GROUP, {
      members: [...o.ids],
      stateMachine: kvStateMachine(),
      leaseReads: o.leaseReads,
      // Small enough that snapshots, compaction and snapshot installs happen within a seed.
      snapshotEntries: 40,
      // One entry per append message (and, with maxInflightMessages 1, one per round trip): a leader's entries
      // reach a follower one by one, so a crash or cut can land between any two of them.
      core: { maxMessageBytes: 64, maxInflightMessages: o.maxInflightMessages },
    });
    o.trace(`start ${n.id}#${inc.n}`);
  }

  /** Power loss: the process dies, its connections break, its disk loses what was not synced. */
  crash(n: SimNode): void {
    if (!n.up) return;
    n.up = false;
    n.current.kill();
    this.#o.net.down(n.address);
    n.disk.crash();
    this.#o.trace(`crash ${n.id}#${n.current.n}`);
  }

  pause(n: SimNode): void {
    if (n.up && !n.current.clock.paused) n.current.clock.pause();
  }

  resume(n: SimNode): void {
    if (n.current.clock.paused) n.current.clock.resume();
  }

  /** The live nodes' cores, for the per-step checks. */
  *cores(): Iterable<Core> {
    for (const n of this.nodes) if (n.up && n.current.core !== undefined) yield n.current.core;
  }

  /** The current leader as most live replicas see it (the highest term's), if any. */
  leader(): SimNode | undefined {
    let best: SimNode | undefined;
    let term = -1;
    for (const n of this.nodes) {
      const c = n.current.core;
      if (n.up && c !== undefined && c.role === 'leader' && c.term > term) {
        best = n;
        term = c.term;
      }
    }
    return best;
  }

  #incarnation(disk: SimDisk, random: Random, n: number): Incarnation {
    const clock = new NodeClock(this.#o.world.clock);
    const slow = new SlowDisk(disk.view(), { clock, random: random.fork(), syncMs: this.#o.timing.syncMs });
    let die: () => void = () => undefined;
    const dead = new Promise<void>((resolve) => (die = resolve));
    const inc: Incarnation = {
      n,
      clock,
      slow,
      node: undefined,
      group: undefined,
      core: undefined,
      dead,
      alive: true,
      kill: () => {
        inc.alive = false;
        clock.kill();
        die();
      },
    };
    return inc;
  }

  /** The checker's view of one incarnation's replicas (nothing once it is dead). */
  #observer(inc: Incarnation): ReplicaObserver {
    const inv = this.#o.invariants;
    return {
      opened: (groupId, core) => {
        if (!inc.alive) return;
        inc.core = core;
        inv.observeRestart(groupId, core);
      },
      ready: (groupId, nodeId, rd) => {
        if (inc.alive) inv.observeReady(groupId, nodeId, rd);
      },
      applied: (groupId, nodeId, entry) => {
        if (inc.alive) inv.observeApply(groupId, nodeId, entry);
      },
      restored: (groupId, nodeId, meta, how) => {
        if (inc.alive) inv.observeRestore(groupId, nodeId, meta, how);
      },
    };
  }
}
