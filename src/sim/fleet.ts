/**
 * The deterministic fleet simulation (issue 14, item 4; `rebalancer sim --scenario fleet`). Per seed: 3–6 real
 * FleetNodes (joinFleet: the control plane on the memory store, the coordinator, the planner, the replica rules, a
 * real RaftNode per process) in 2–3 zones, on virtual time. Each process has its own NodeClock (pause = SIGSTOP,
 * kill = kill -9); its store client runs on it (with the store faults of world.ts) and so does its Raft node, whose
 * disk, network and send path are the Raft simulation's (SimDisk behind SlowDisk, SimNetwork, MessageFaults),
 * injected through joinFleet's internal `raftIo`. 8 groups of 3 replicas run the key-value state machine; one client
 * per group issues commands and reads through any node (a local replica, or routed to a holder).
 *
 * Faults, drawn from the seed before the run (the same with or without a mutant): crash (unsynced disk writes lost)
 * and restart; graceful deactivate() and a later return; a whole zone deactivated and brought back; a node cut off
 * from Raft peers and the store, or from Raft peers only, or from the store only; a paused process; message loss,
 * duplication and delay.
 *
 * Checked after every step: Raft safety per group (raft-invariants.ts, fed from every replica's durable Readies,
 * applies and snapshot loads); at every membership change the fleet proposes (seen in the leader's durable Ready),
 * that the new voter set has a quorum of caught-up members (durable log within catchUpLagEntries of the entry before
 * the change: what the planner's "healthy" promises) and, for a removal, at least the desired replica count of
 * voters (moves are add-before-remove); InvariantErrors reported by a node; no client call on an up node fails
 * with the ClosedError of a replica closed under it (it must go on to another holder: liveness). After the faults:
 * everything healed, every node active again, and within a bound of virtual time every group must be `converged` in
 * the fleet's status
 * and in fact (its leader's replica has the desired voters, no learners, and is the desired leader); one command
 * per group must then succeed; the whole client history must be linearizable (kvModel, keys per group).
 */
import { MemoryServer, MemoryStore } from '../backends/memory/index.js';
import { ClosedError, InvariantError, NoQuorumError, NotLeaderError, TimeoutError } from '../errors.js';
import { readFleetView } from '../protocol/fleet/io.js';
import { FleetKeys } from '../protocol/fleet/keys.js';
import { addGroup } from '../protocol/fleet/io.js';
import { quorum } from '../protocol/fleet/plan.js';
import { fleetStatus, type FleetStatus } from '../protocol/fleet/status.js';
import { NO_MUTANTS, type FleetMutantName, type Mutants } from '../protocol/mutants.js';
import { decodeMembershipEntry } from '../raft/messages.js';
import type { ReplicaObserver } from '../raft/node/replica.js';
import { SimDisk } from '../raft/wal/disk.js';
import { joinFleet, type DataDirIdentity, type FleetNode } from '../runtime/fleet/node.js';
import { HistoryRecorder, checkOperations } from './linearizability.js';
import { kvModel, type KvInput, type KvOutput } from './linearizability-models.js';
import { kvStateMachine } from './raft-kv.js';
import { RaftInvariants } from './raft-invariants.js';
import { MessageFaults, SlowDisk, SimNetwork, virtualTimers } from './raft-world.js';
import { Random } from './random.js';
import type { SeedResult } from './run.js';
import {
  healNode,
  newFaultyNode,
  nodeFaults,
  pauseNode,
  rebootClock,
  resumeNode,
  SimWorld,
  type FaultyNode,
} from './world.js';

export interface FleetSimOptions {
  readonly seed: number;
  /** 3–6 nodes (default: drawn from the seed, 4–6). */
  readonly nodes?: number | undefined;
  /** Groups of 3 replicas (default 8). */
  readonly groups?: number | undefined;
  readonly mutant?: FleetMutantName | undefined;
  /** Virtual ms of faults and client load before the liveness phase (default 6000). */
  readonly faultMs?: number | undefined;
  /** Stop the seed at its first safety violation (default true). */
  readonly stopAtFirstViolation?: boolean | undefined;
  /**
   * Also draw `store-loss` faults: the control store restarts without its data (every record and session gone at
   * once). Opt-in, so that the other seeds' schedules stay as they are (`--scenario fleet-store-loss`).
   */
  readonly storeLoss?: boolean | undefined;
  /** Every schedule event, start, crash, move and client anomaly, as text (the trace whose hash is `traceHash`). */
  readonly trace?: ((line: string) => void) | undefined;
}

export interface FleetOpStats {
  ok: number;
  unknown: number;
  failed: number;
  other: number;
}

export interface FleetSeedResult extends SeedResult {
  readonly traceHash: string;
  readonly virtualMs: number;
  readonly nodes: number;
  readonly ops: FleetOpStats;
  /** Membership changes the fleet proposed (and the checks made on them). */
  readonly moves: number;
  readonly faults: Readonly<Record<string, number>>;
  /** How long after the heal every group was converged (undefined: not within the bound). */
  readonly settledAfterMs: number | undefined;
  readonly linearizability: 'ok' | 'illegal' | 'unknown' | 'skipped';
}

type Violation = SeedResult['violations'][number];

/** The world's bounds (docs/simulation.md, "The fleet scenario"). */
export const FLEET_SIM = {
  ttlMs: 1000,
  gracePeriodMs: 1000,
  tickMs: 20,
  electionTicks: 8,
  requestTimeoutMs: 600,
  catchUpLagEntries: 4,
  replicas: 3,
  syncMs: { min: 0.2, max: 2 },
  /** A deactivate() that has not drained by then is closed (its replicas are replaced after the grace period). */
  drainTimeoutMs: 6000,
  /** After the heal, every group must be converged within this much virtual time. */
  settleBoundMs: 30_000,
} as const;

const FLEET = 'sim';
/** A removal is judged against the smallest desired count written within this window (longer than any fault). */
const DESIRED_WINDOW_MS = 10_000;
const MACHINE = 'kv';
const SECRET = 'rebalancer-fleet-simulation-secret';
const KEYS = ['x', 'log'] as const;

type NodeState = 'down' | 'starting' | 'up' | 'draining';

interface SimFleetNode extends FaultyNode {
  readonly id: string;
  readonly zone: string;
  readonly address: string;
  readonly disk: SimDisk;
  /** The node's fleet.json (FleetInternals.identityFile): kept across its crashes, as a synced file is. */
  identity: DataDirIdentity | undefined;
  readonly random: Random;
  state: NodeState;
  incarnation: number;
  store: MemoryStore | undefined;
  fleet: FleetNode | undefined;
  /** Resolves when the current process dies or leaves (requests in flight on it end with an unknown outcome). */
  gone: Promise<void>;
  end: () => void;
  alive: boolean;
}

type FaultKind =
  'crash' | 'deactivate' | 'zone-drain' | 'isolate' | 'raft-cut' | 'store-cut' | 'pause' | 'messages' | 'store-loss';

interface ScheduledFault {
  readonly atMs: number;
  readonly kind: FaultKind;
  readonly node: number;
  readonly durMs: number;
  readonly rates: { loss: number; duplicate: number; delay: number; maxDelayMs: number };
}

const FAULT_KINDS: readonly FaultKind[] = [
  'crash',
  'crash',
  'deactivate',
  'deactivate',
  'zone-drain',
  'zone-drain',
  'isolate',
  'raft-cut',
  'store-cut',
  'pause',
  'messages',
];
/** With `storeLoss`: about one fault in seven (2 of 13) is a store that loses its data. */
const FAULT_KINDS_WITH_STORE_LOSS: readonly FaultKind[] = [...FAULT_KINDS, 'store-loss', 'store-loss'];

export async function runFleetSim(o: FleetSimOptions): Promise<FleetSeedResult> {
  // An assertion inside a promise callback of the Raft or fleet code surfaces as an unhandled rejection: in the
  // simulator it is a finding of this seed (as in raft.ts), not the end of the process.
  const assertions: Violation[] = [];
  let now = (): number => 0;
  const onUnhandled = (reason: unknown): void => {
    assertions.push({ atMs: now(), kind: 'assertion', detail: errorText(reason) });
  };
  process.on('unhandledRejection', onUnhandled);
  try {
    const sim = new FleetSim(o, assertions);
    now = () => sim.world.now();
    return await sim.run();
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
}

class FleetSim {
  readonly world = new SimWorld();
  readonly #o: FleetSimOptions;
  readonly #assertions: Violation[];
  readonly #violations: Violation[] = [];
  readonly #mutants: Mutants;
  readonly #rng: Random;
  readonly #faultRng: Random;
  readonly #clientRng: Random;
  readonly #net: SimNetwork;
  readonly #msgFaults: MessageFaults;
  readonly #invariants: RaftInvariants;
  readonly #server: MemoryServer;
  readonly #admin: MemoryStore;
  readonly #keys = new FleetKeys(FLEET);
  readonly #nodes: SimFleetNode[] = [];
  readonly #groups: string[];
  readonly #history = new HistoryRecorder<KvInput, KvOutput>(() => this.world.now());
  readonly #ops: FleetOpStats = { ok: 0, unknown: 0, failed: 0, other: 0 };
  readonly #faultCounts: Record<string, number> = {};
  /** Durable last log index of each replica (group id → node → index), from its Readies. */
  readonly #lastIndex = new Map<string, Map<string, number>>();
  /** Membership entries already checked (`group@index@term`). */
  readonly #checkedMoves = new Set<string>();
  #moves = 0;
  /** Each group's desired member counts as written, with when (the planner may act on one it read a while ago). */
  readonly #desiredCounts = new Map<string, { atMs: number; count: number }[]>();
  #hash = 0x811c9dc5;
  #faultsOn = true;
  readonly #stopEarly: boolean;
  #watcher: { close(): Promise<void> } | undefined;

  constructor(o: FleetSimOptions, assertions: Violation[]) {
    this.#o = o;
    this.#assertions = assertions;
    this.#stopEarly = o.stopAtFirstViolation ?? true;
    this.#mutants = o.mutant === undefined ? NO_MUTANTS : new Set([o.mutant]);
    this.#rng = new Random(o.seed);
    const nodeCount = o.nodes ?? this.#rng.int(4, 6);
    if (!Number.isInteger(nodeCount) || nodeCount < 3 || nodeCount > 6) {
      throw new RangeError(`the fleet scenario runs 3 to 6 nodes, got ${nodeCount}`);
    }
    const zones = this.#rng.int(2, 3);
    this.#faultRng = this.#rng.fork();
    this.#clientRng = this.#rng.fork();
    this.#net = new SimNetwork({
      clock: this.world.clock,
      random: this.#rng.fork(),
      latencyMs: { min: 0.3, max: 3 },
      trace: (e) => this.#mix(`${e.atMs.toFixed(3)}${e.kind}${e.from}${e.to}${e.bytes ?? ''}`),
    });
    this.#msgFaults = new MessageFaults(this.#rng.fork());
    this.#invariants = new RaftInvariants({ now: () => this.world.now() });
    this.#server = new MemoryServer({ clock: this.world.clock });
    this.#admin = new MemoryStore({
      server: this.#server,
      namespace: FLEET,
      clock: this.world.clock,
      maxSessionTtlMs: FLEET_SIM.ttlMs,
    });
    this.#groups = Array.from({ length: o.groups ?? 8 }, (_, i) => `g${i + 1}`);
    for (let i = 0; i < nodeCount; i++) {
      const id = `n${i + 1}`;
      const random = this.#rng.fork();
      this.#nodes.push(
        Object.assign(newFaultyNode(this.world, 1 + random.range(-0.01, 0.01)), {
          id,
          zone: `z${(i % zones) + 1}`,
          address: `${id}:7000`,
          disk: new SimDisk(() => random.next()),
          identity: undefined,
          random,
          state: 'down' as NodeState,
          incarnation: 0,
          store: undefined,
          fleet: undefined,
          gone: Promise.resolve(),
          end: () => undefined,
          alive: false,
        }),
      );
    }
  }

  // ---- the run ----

  async run(): Promise<FleetSeedResult> {
    const faultMs = this.#o.faultMs ?? 6000;
    const schedule = this.#drawSchedule(faultMs);
    // The groups' Raft id tags from a source of their own: the seed's other draws stay what they were.
    const tags = new Random(this.#o.seed ^ 0x7a9);
    for (const g of this.#groups) {
      await this.world.drive(
        addGroup(this.#admin, this.#keys, g, {
          replicas: FLEET_SIM.replicas,
          machine: MACHINE,
          random: () => tags.next(),
        }),
      );
    }
    this.#watcher = await this.world.drive(this.#admin.watch(this.#keys.desired, () => void this.#readDesired()));
    for (const n of this.#nodes) this.#start(n);
    for (const f of schedule) this.world.at(f.atMs, () => this.#apply(f));
    this.#trace(`schedule ${schedule.length} faults over ${this.#nodes.length} nodes`);
    const load = Promise.all(this.#groups.map((g, i) => this.#client(g, i, faultMs)));
    if ((await this.#until(load, faultMs + 5000)) === 'unsafe') return this.#result(undefined, 'skipped');

    // Liveness: heal everything, every node active again; then every group must converge.
    this.#faultsOn = false;
    this.#trace('heal');
    this.#msgFaults.heal();
    for (const n of this.#nodes) {
      healNode(n);
      if (n.state === 'down') this.#start(n);
    }
    const from = this.world.now();
    let settled: number | undefined;
    let lastStatus: FleetStatus | undefined;
    let waiting: string | undefined = '';
    while (this.world.now() < from + FLEET_SIM.settleBoundMs) {
      const s = this.#readStatus();
      const r = await this.#until(s, 2000);
      if (r === 'unsafe') return this.#result(undefined, 'skipped');
      if (r === true) {
        lastStatus = await s;
        const why = this.#converged(lastStatus);
        if (why !== waiting) this.#trace(`waiting: ${why ?? 'converged'}`);
        waiting = why;
        if (why === undefined) {
          settled = this.world.now() - from;
          break;
        }
      }
      if (
        (await this.#until(new Promise<void>((res) => this.world.clock.setTimeout(() => res(), 250)), 300)) === 'unsafe'
      ) {
        return this.#result(undefined, 'skipped');
      }
    }
    if (settled === undefined) {
      this.#violations.push({
        atMs: this.world.now(),
        kind: 'liveness',
        detail: `not converged ${FLEET_SIM.settleBoundMs} ms after the heal: ${
          lastStatus === undefined ? 'the status could not be read' : this.#converged(lastStatus)
        }`,
      });
    } else {
      this.#trace(`converged after ${settled.toFixed(0)} ms`);
      // One command per group, through a node picked as the clients pick theirs (its replica, or routed).
      const finals = Promise.all(this.#groups.map((g, i) => this.#finalCommand(g, i)));
      const f = await this.#until(finals, 10_000);
      if (f === 'unsafe') return this.#result(settled, 'skipped');
      if (f === false) {
        this.#violations.push({
          atMs: this.world.now(),
          kind: 'liveness',
          detail: 'a command after convergence neither completed nor failed within 10 s',
        });
      }
    }
    const lin = checkOperations(kvModel(), this.#history.operations(), { maxStepsPerPartition: 400_000 });
    if (lin.result === 'illegal') {
      this.#violations.push({ atMs: this.world.now(), kind: 'linearizability', detail: lin.message });
    }
    return this.#result(settled, lin.result);
  }

  #result(settledAfterMs: number | undefined, linearizability: FleetSeedResult['linearizability']): FleetSeedResult {
    for (const n of this.#nodes) if (n.alive) this.#kill(n, false);
    void this.#watcher?.close();
    this.#mix(JSON.stringify(this.#ops));
    return {
      seed: this.#o.seed,
      steps: this.world.steps,
      violations: [...this.#invariants.violations, ...this.#assertions, ...this.#violations],
      traceHash: (this.#hash >>> 0).toString(16).padStart(8, '0'),
      virtualMs: Math.round(this.world.now()),
      nodes: this.#nodes.length,
      ops: this.#ops,
      moves: this.#moves,
      faults: this.#faultCounts,
      settledAfterMs: settledAfterMs === undefined ? undefined : Math.round(settledAfterMs),
      linearizability,
    };
  }

  #safe(): boolean {
    return (
      !this.#stopEarly ||
      (this.#invariants.ok && this.#assertions.length === 0 && this.#violations.every((v) => v.kind === 'liveness'))
    );
  }

  /** Run virtual time until `p` settles (true), the bound passes (false), or a violation stops the run. */
  async #until(p: Promise<unknown>, boundMs: number): Promise<boolean | 'unsafe'> {
    let done = false;
    void p.then(
      () => (done = true),
      () => (done = true),
    );
    const end = this.world.now() + boundMs;
    for (;;) {
      await this.world.flush();
      if (!this.#safe()) return 'unsafe';
      if (done) return true;
      if (!this.world.clock.fireNext(end)) return false;
      this.world.steps++;
    }
  }

  #mix(s: string): void {
    let h = this.#hash;
    for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
    this.#hash = h;
  }

  #trace(line: string): void {
    const l = `${this.world.now().toFixed(3)} ${line}`;
    this.#mix(l);
    this.#o.trace?.(l);
  }

  // ---- processes ----

  /** Start (or restart) a node's process on its disk: a fresh clock, store client and Raft node. */
  #start(n: SimFleetNode): void {
    rebootClock(this.world, n);
    n.incarnation++;
    n.state = 'starting';
    n.alive = true;
    n.gone = new Promise<void>((resolve) => (n.end = resolve));
    const clock = n.clock;
    const inc = n.incarnation;
    const store = new MemoryStore({
      server: this.#server,
      namespace: FLEET,
      clock: n.time,
      maxClockDriftRate: 0.01,
      maxSessionTtlMs: FLEET_SIM.ttlMs,
      requestTimeoutMs: 2000,
      faults: nodeFaults(n, this.#faultRng.fork()),
    });
    n.store = store;
    const random = n.random.fork();
    const disk = new SlowDisk(n.disk.view(), { clock, random: random.fork(), syncMs: FLEET_SIM.syncMs });
    const current = (): boolean => n.alive && n.incarnation === inc;
    joinFleet(
      {
        store,
        fleet: FLEET,
        node: { id: n.id, zone: n.zone, weight: 1, address: n.address },
        dataDir: `sim:${n.id}`,
        secret: SECRET,
        machines: { [MACHINE]: { stateMachine: kvStateMachine(), snapshotEntries: 30 } },
        tickMs: FLEET_SIM.tickMs,
        electionTicks: FLEET_SIM.electionTicks,
        requestTimeoutMs: FLEET_SIM.requestTimeoutMs,
        sessionTtlMs: FLEET_SIM.ttlMs,
        gracePeriodMs: FLEET_SIM.gracePeriodMs,
        joinTimeoutMs: 4 * FLEET_SIM.ttlMs,
        minNodes: Math.min(3, this.#nodes.length),
        catchUpLagEntries: FLEET_SIM.catchUpLagEntries,
        clock: n.time,
      },
      {
        mutants: this.#mutants,
        identityFile: { read: () => n.identity, write: (identity) => void (n.identity = identity) },
        raftIo: {
          disk,
          network: this.#net.node(n.address, clock),
          timers: virtualTimers(clock),
          clock: () => clock.now(),
          random: () => random.next(),
          send: this.#msgFaults.ioSend(n.id, clock),
          observer: this.#observer(n.id, current),
        },
      },
    ).then(
      (fleet) => {
        if (!current()) {
          void fleet.close().catch(() => undefined);
          return;
        }
        n.fleet = fleet;
        n.state = 'up';
        this.#trace(`up ${n.id}#${inc}`);
        fleet.on('error', ({ error, context }) => {
          if (error instanceof InvariantError && current()) {
            this.#violations.push({
              atMs: this.world.now(),
              kind: 'invariant',
              detail: `${n.id} ${context}: ${error.message}`,
            });
          }
        });
        fleet.on('moved', (e) => this.#trace(`moved ${e.group} ${e.change.type} ${e.change.node} by ${n.id}`));
        fleet.on('groupGained', (e) => this.#trace(`gained ${n.id} ${e.group} ${e.mode}`));
        fleet.on('groupLost', (e) => this.#trace(`lost ${n.id} ${e.group} ${e.reason}`));
      },
      (error: unknown) => {
        if (!current()) return;
        // Could not join (the previous incarnation's session still lives, the store was cut off): a supervisor
        // restarts it a little later.
        this.#trace(`join failed ${n.id}#${inc}: ${errorText(error)}`);
        this.#kill(n, false);
        this.world.at(this.world.now() + 500, () => {
          if (n.state === 'down') this.#start(n);
        });
      },
    );
  }

  /** kill -9 (and, with `crashDisk`, a power loss: what was not synced is lost). */
  #kill(n: SimFleetNode, crashDisk: boolean): void {
    if (!n.alive) return;
    n.alive = false;
    n.state = 'down';
    n.clock.kill();
    n.store?.crash();
    n.thaw?.();
    n.paused = false;
    n.frozen = undefined;
    n.thaw = undefined;
    this.#net.down(n.address);
    if (crashDisk) n.disk.crash();
    n.fleet = undefined;
    n.store = undefined;
    n.end();
  }

  /** deactivate(): drain, then leave; a drain that does not finish in time is closed (leave at once). */
  #deactivate(n: SimFleetNode): void {
    const fleet = n.fleet;
    if (fleet === undefined || n.state !== 'up') return;
    n.state = 'draining';
    const inc = n.incarnation;
    const left = (): void => {
      if (n.incarnation !== inc || !n.alive) return;
      this.#trace(`left ${n.id}#${inc}`);
      // The process exits once it left: its clock stops, its disk stays. After the heal it comes back at once.
      this.#kill(n, false);
      if (!this.#faultsOn) this.#start(n);
    };
    fleet.deactivate({ timeoutMs: FLEET_SIM.drainTimeoutMs }).then(left, (error: unknown) => {
      if (n.incarnation !== inc || !n.alive) return;
      this.#trace(`drain of ${n.id} ended: ${errorText(error)}`);
      void fleet.close().then(left, left);
    });
  }

  // ---- faults ----

  #drawSchedule(faultMs: number): ScheduledFault[] {
    const rng = this.#rng.fork();
    const out: ScheduledFault[] = [];
    let t = 1500;
    for (;;) {
      t += rng.exp(450);
      if (t > faultMs - 1500) break;
      out.push({
        atMs: t,
        kind: rng.pick(this.#o.storeLoss === true ? FAULT_KINDS_WITH_STORE_LOSS : FAULT_KINDS),
        node: rng.int(0, this.#nodes.length - 1),
        durMs: rng.range(0.3, 3) * FLEET_SIM.ttlMs,
        rates: {
          loss: rng.range(0, 0.2),
          duplicate: rng.range(0, 0.1),
          delay: rng.range(0, 0.3),
          maxDelayMs: rng.range(5, 100),
        },
      });
    }
    return out;
  }

  #apply(f: ScheduledFault): void {
    if (!this.#faultsOn) return;
    const n = this.#nodes[f.node]!;
    const out = this.#nodes.filter((x) => x.state !== 'up').length;
    // Keep enough nodes for three replicas in the fleet's worst moments (a fault on a fourth node waits its turn).
    const spare = out < Math.max(1, this.#nodes.length - 3);
    const end = this.world.now() + f.durMs;
    const count = (): void => {
      this.#faultCounts[f.kind] = (this.#faultCounts[f.kind] ?? 0) + 1;
      this.#trace(
        `fault ${f.kind} ${f.kind === 'messages' ? JSON.stringify(f.rates) : n.id} for ${f.durMs.toFixed(0)} ms`,
      );
    };
    switch (f.kind) {
      case 'crash':
        if (n.state !== 'up' || !spare) return;
        count();
        this.#kill(n, true);
        this.world.at(end, () => {
          if (n.state === 'down') this.#start(n);
        });
        return;
      case 'deactivate':
        if (n.state !== 'up' || !spare) return;
        count();
        this.#deactivate(n);
        this.world.at(end + FLEET_SIM.drainTimeoutMs, () => {
          if (n.state === 'down') this.#start(n);
        });
        return;
      case 'zone-drain': {
        // Maintenance of a whole zone: every node of it drains, then they come back together.
        const zone = this.#nodes.filter((x) => x.zone === n.zone);
        if (zone.some((x) => x.state !== 'up') || out > 0 || this.#nodes.length - zone.length < 2) return;
        count();
        for (const x of zone) this.#deactivate(x);
        this.world.at(end + FLEET_SIM.drainTimeoutMs, () => {
          for (const x of zone) if (x.state === 'down') this.#start(x);
        });
        return;
      }
      case 'isolate':
      case 'raft-cut':
        if (!n.alive) return;
        count();
        if (f.kind === 'isolate') n.partitioned = true;
        for (const p of this.#nodes) {
          if (p === n) continue;
          this.#msgFaults.partition(n.id, p.id);
          this.#msgFaults.partition(p.id, n.id);
        }
        this.world.at(end, () => {
          if (f.kind === 'isolate') n.partitioned = false;
          for (const p of this.#nodes) {
            if (p === n) continue;
            this.#msgFaults.heal(n.id, p.id);
            this.#msgFaults.heal(p.id, n.id);
          }
        });
        return;
      case 'store-loss':
        // The store restarts without its data: records, sessions and the namespace's incarnation (ADR 0009, 0023).
        count();
        this.#server.loseData();
        return;
      case 'store-cut':
        if (!n.alive || n.partitioned) return;
        count();
        n.partitioned = true;
        this.world.at(end, () => (n.partitioned = false));
        return;
      case 'pause':
        if (!n.alive || n.paused) return;
        count();
        pauseNode(n);
        this.world.at(end, () => resumeNode(n));
        return;
      case 'messages':
        count();
        this.#msgFaults.set(f.rates);
        this.world.at(end, () => this.#msgFaults.set({ loss: 0, duplicate: 0, delay: 0 }));
        return;
    }
  }

  // ---- the checks ----

  /** The checker's view of one process's replicas (nothing once it is gone). */
  #observer(nodeId: string, current: () => boolean): ReplicaObserver {
    const inv = this.#invariants;
    return {
      opened: (groupId, core) => {
        if (!current()) return;
        inv.observeRestart(groupId, core);
        this.#setLast(groupId, nodeId, core.log.lastIndex());
      },
      ready: (groupId, id, rd) => {
        if (!current()) return;
        inv.observeReady(groupId, id, rd);
        if (rd.snapshot !== undefined) this.#setLast(groupId, id, rd.snapshot.meta.index);
        const last = rd.entries[rd.entries.length - 1];
        if (last !== undefined) this.#setLast(groupId, id, last.index);
        if (rd.role === 'leader') {
          for (const e of rd.entries) if (e.type === 'membership') this.#checkMove(groupId, id, e);
        }
      },
      applied: (groupId, id, entry) => {
        if (current()) inv.observeApply(groupId, id, entry);
      },
      restored: (groupId, id, meta, how) => {
        if (current()) inv.observeRestore(groupId, id, meta, how);
      },
    };
  }

  #setLast(groupId: string, nodeId: string, index: number): void {
    let m = this.#lastIndex.get(groupId);
    if (m === undefined) this.#lastIndex.set(groupId, (m = new Map()));
    m.set(nodeId, index);
  }

  /**
   * A membership change the leader appended (durably): the planner only makes one when the voters after it that are
   * caught up — their durable logs within catchUpLagEntries of the entry before it — are a quorum of them, and only
   * removes a voter while there are more voters than desired members.
   */
  #checkMove(groupId: string, leader: string, e: { index: number; term: number; data: Uint8Array }): void {
    const key = `${groupId}@${e.index}@${e.term}`;
    if (this.#checkedMoves.has(key)) return;
    this.#checkedMoves.add(key);
    this.#moves++;
    const { change, membership } = decodeMembershipEntry(e.data);
    const voters = membership.voters;
    const last = this.#lastIndex.get(groupId) ?? new Map<string, number>();
    const floor = e.index - 1 - FLEET_SIM.catchUpLagEntries;
    const caughtUp = voters.filter((v) => v === leader || (last.get(v) ?? 0) >= floor);
    this.#trace(`move ${groupId} ${change.type} ${change.node} by ${leader}: voters ${voters.join(',')}`);
    if (caughtUp.length < quorum(voters.length)) {
      this.#violations.push({
        atMs: this.world.now(),
        kind: 'quorum-not-caught-up',
        detail:
          `group ${groupId}: ${leader} appended ${change.type} ${change.node} at ${e.index}; of the voters after it ` +
          `(${voters.join(', ')}) only ${caughtUp.length} (${caughtUp.join(', ')}) had the log up to ${floor}, ` +
          `fewer than ${quorum(voters.length)}`,
      });
    }
    // Fewer voters than the smallest desired count written lately (a leader acts on the record it last read).
    const counts = (this.#desiredCounts.get(groupId.slice(0, groupId.lastIndexOf(':'))) ?? []).filter(
      (c, i, all) => c.atMs >= this.world.now() - DESIRED_WINDOW_MS || i === all.length - 1,
    );
    const wanted = Math.min(FLEET_SIM.replicas, ...counts.map((c) => c.count));
    if (change.type === 'remove' && voters.length < wanted && !membership.learners.includes(change.node)) {
      this.#violations.push({
        atMs: this.world.now(),
        kind: 'remove-before-add',
        detail: `group ${groupId}: ${leader} removed voter ${change.node} at ${e.index}, leaving ${voters.length} voters (${voters.join(', ')}) of the ${wanted} desired`,
      });
    }
  }

  /** Record each group's desired member count when it changes (on every hint of the desired/ prefix). */
  async #readDesired(): Promise<void> {
    const view = await readFleetView(this.#admin, this.#keys, () => undefined);
    for (const g of view.groups.values()) {
      const count = g.desired?.members.length;
      if (count === undefined) continue;
      let list = this.#desiredCounts.get(g.name);
      if (list === undefined) this.#desiredCounts.set(g.name, (list = []));
      if (list[list.length - 1]?.count !== count) list.push({ atMs: this.world.now(), count });
      if (list.length > 64) list.shift();
    }
  }

  async #readStatus(): Promise<FleetStatus> {
    const view = await readFleetView(this.#admin, this.#keys, () => undefined);
    return fleetStatus(FLEET, view);
  }

  /** Undefined when every group is converged, in the status and in its replicas; else what is not. */
  #converged(s: FleetStatus): string | undefined {
    const notUp = this.#nodes.filter((n) => n.state !== 'up').map((n) => n.id);
    if (notUp.length > 0) return `nodes not up: ${notUp.join(', ')}`;
    // Up is not enough: a node whose session ended while it was cut off registers again, and the groups must be
    // placed on it again (every node active in the fleet, every group with its full member count).
    const active = new Set(s.nodes.filter((x) => x.state === 'active').map((x) => x.id));
    const absent = this.#nodes.filter((n) => !active.has(n.id)).map((n) => n.id);
    if (absent.length > 0) return `nodes not active in the fleet's records: ${absent.join(', ')}`;
    const members = Math.min(FLEET_SIM.replicas, this.#nodes.length);
    for (const g of s.groups) {
      if (g.desired.length !== members)
        return `group ${g.name} has ${g.desired.length} desired members, not ${members}`;
      if (g.health !== 'converged') return `group ${g.name} is ${g.health}: ${g.detail}`;
      const id = `${g.name}:${g.generation}`;
      const leaders = this.#nodes.flatMap((n) =>
        (n.fleet?.replicas() ?? [])
          .filter((r) => r.group === g.name && r.status.role === 'leader')
          .map((r) => ({ node: n.id, s: r.status })),
      );
      const l = leaders.find((x) => x.node === g.desiredLeader);
      if (l === undefined) return `group ${id}: its desired leader ${g.desiredLeader} does not lead`;
      const voters = [...l.s.membership.voters].sort();
      if (voters.join(',') !== [...g.desired].sort().join(',') || l.s.membership.learners.length > 0) {
        return `group ${id}: voters ${voters.join(',')} learners ${l.s.membership.learners.join(',')}, desired ${g.desired.join(',')}`;
      }
    }
    return undefined;
  }

  // ---- clients ----

  /** One client per group: commands and reads through live nodes (its own first), until `untilMs`. */
  async #client(group: string, index: number, untilMs: number): Promise<void> {
    const rng = this.#clientRng.fork();
    const name = `c${index + 1}`;
    let seq = 0;
    while (this.world.now() < untilMs) {
      await new Promise<void>((resolve) => this.world.clock.setTimeout(resolve, rng.range(25, 100)));
      const n = this.#pick(index + rng.int(0, this.#nodes.length - 1));
      if (n === undefined || this.world.now() >= untilMs) continue;
      const key = rng.pick(KEYS);
      const p = rng.next();
      const input: KvInput =
        p < 0.4
          ? { op: 'get', key }
          : key === 'log' || p < 0.7
            ? { op: 'append', key, value: `|${name}.${++seq}` }
            : { op: 'put', key, value: `${name}.${++seq}` };
      await this.#issue(name, n, group, input, FLEET_SIM.requestTimeoutMs);
    }
  }

  async #finalCommand(group: string, index: number): Promise<void> {
    const n = this.#pick(index);
    const input: KvInput = { op: 'append', key: 'log', value: `|final.${index}` };
    const r = n === undefined ? 'no node' : await this.#issue('final', n, group, input, 5000);
    if (r !== 'ok') {
      this.#violations.push({
        atMs: this.world.now(),
        kind: 'liveness',
        detail: `a command on group ${group} after convergence did not complete: ${r}`,
      });
    }
  }

  #pick(from: number): SimFleetNode | undefined {
    for (let i = 0; i < this.#nodes.length; i++) {
      const n = this.#nodes[(from + i) % this.#nodes.length]!;
      if (n.state === 'up' && n.fleet !== undefined) return n;
    }
    return undefined;
  }

  /** One operation, recorded on the world's clock; its outcome as the runtime reports it. */
  async #issue(client: string, n: SimFleetNode, group: string, input: KvInput, timeoutMs: number): Promise<string> {
    const fleet = n.fleet!;
    const rec = this.#history.call(client, { ...input, key: `${group}/${input.key}` } as KvInput);
    const run = (async (): Promise<{ ok: true; out: KvOutput } | { ok: false; error: unknown }> => {
      try {
        const out =
          input.op === 'get'
            ? await fleet.query<KvOutput>(group, { op: 'get', key: input.key }, { timeoutMs })
            : await fleet.command<KvOutput>(group, input, { timeoutMs });
        return { ok: true, out };
      } catch (error) {
        return { ok: false, error };
      }
    })();
    const r = await Promise.race([run, n.gone.then(() => 'gone' as const)]);
    if (r === 'gone') {
      this.#ops.unknown++;
      rec.unknown();
      return 'the node went away';
    }
    if (r.ok) {
      this.#ops.ok++;
      rec.ok(r.out);
      return 'ok';
    }
    const e = r.error;
    if (e instanceof ClosedError && e.message.startsWith('raft group ') && n.state === 'up') {
      // A replica of an up node closed under the call (dropped, moved away) and the caller saw it: the call should
      // have gone on to another holder with the same command id (docs/fleet.md). Not a safety violation.
      this.#violations.push({
        atMs: this.world.now(),
        kind: 'liveness',
        detail: `client ${client} on ${n.id}: a replica closed under the call reached the caller: ${errorText(e)}`,
      });
    }
    if (e instanceof TimeoutError && e.outcome !== 'unknown') {
      this.#ops.failed++;
      rec.failed();
    } else if (e instanceof NoQuorumError || e instanceof NotLeaderError) {
      this.#ops.failed++;
      rec.failed();
    } else if (e instanceof TimeoutError || e instanceof ClosedError) {
      this.#ops.unknown++;
      rec.unknown();
    } else {
      this.#ops.other++;
      rec.unknown();
      this.#trace(`client ${client} on ${n.id}: ${errorText(e)}`);
    }
    return errorText(e);
  }
}

function errorText(e: unknown): string {
  return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
}
