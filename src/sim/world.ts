/**
 * What every simulated scenario shares: the virtual world clock and its step
 * loop, and a node's faults (latency, errors, lost notifications, partitions,
 * SIGSTOP). Scenarios (groups.ts, slots.ts) add their processes and their
 * oracle.
 */
import type { MemoryFaults, MemoryServer } from '../backends/memory/index.js';
import { ScaledClock, VirtualClock } from '../store/clock.js';
import type { Clock } from '../store/contract.js';
import { NodeClock } from './node-clock.js';
import type { Random } from './random.js';

export class SimWorld {
  readonly clock = new VirtualClock(0);
  steps = 0;

  now(): number {
    return this.clock.now();
  }

  /** Let promise callbacks run (the runtime's async code between timers). */
  async flush(): Promise<void> {
    await new Promise<void>((resolve) => setImmediate(resolve));
  }

  at(atMs: number, fn: () => void): void {
    this.clock.setTimeout(fn, Math.max(0, atMs - this.clock.now()));
  }

  /** Advance to `untilMs` one timer at a time; `check` runs after each step and may stop the run (returns false). */
  async runUntil(untilMs: number, check: () => boolean): Promise<boolean> {
    for (;;) {
      await this.flush();
      if (!check()) return false;
      if (!this.clock.fireNext(untilMs)) break;
      this.steps++;
    }
    this.clock.advance(Math.max(0, untilMs - this.clock.now()));
    return true;
  }

  /**
   * The liveness phase: run in 250 ms steps until `settled()` holds — resolves how long that took — or `boundMs`
   * passed (undefined), or `check` stopped the run ('unsafe').
   */
  async settle(boundMs: number, check: () => boolean, settled: () => boolean): Promise<number | undefined | 'unsafe'> {
    const from = this.clock.now();
    while (this.clock.now() < from + boundMs) {
      if (!(await this.runUntil(this.clock.now() + 250, check))) return 'unsafe';
      if (settled()) return this.clock.now() - from;
    }
    return undefined;
  }

  /** Await a promise while virtual time runs (up to a bound). */
  async drive<T>(p: Promise<T>, boundMs = 60_000): Promise<T> {
    let done = false;
    let value: T | undefined;
    let error: unknown;
    p.then(
      (v) => {
        done = true;
        value = v;
      },
      (e: unknown) => {
        done = true;
        error = e;
      },
    );
    const until = this.clock.now() + boundMs;
    while (!done && this.clock.now() < until) {
      await this.flush();
      if (done) break;
      if (!this.clock.fireNext(until)) break;
    }
    if (!done) throw new Error('simulation: an operation did not finish in virtual time');
    if (error !== undefined) throw error;
    return value as T;
  }
}

/** The fault knobs of one simulated process and its view of time. */
export interface FaultyNode {
  up: boolean;
  paused: boolean;
  partitioned: boolean;
  drift: number;
  /** The clock-rate fault's factor on top of `drift` (1: none). */
  clockFactor: number;
  clock: NodeClock;
  time: Clock;
  thaw: (() => void) | undefined;
  frozen: Promise<void> | undefined;
  latencyMs: number;
  errorRate: number;
  dropRate: number;
  notifyDelayMs: number;
}

export function newFaultyNode(world: SimWorld, drift: number): FaultyNode {
  const clock = new NodeClock(world.clock);
  return {
    up: false,
    paused: false,
    partitioned: false,
    drift,
    clockFactor: 1,
    clock,
    time: new ScaledClock(clock, drift),
    thaw: undefined,
    frozen: undefined,
    latencyMs: 1,
    errorRate: 0,
    dropRate: 0,
    notifyDelayMs: 0,
  };
}

/** A fresh process: a new clock (the old one's timers never fire again). */
export function rebootClock(world: SimWorld, node: FaultyNode): void {
  node.clock = new NodeClock(world.clock);
  node.clockFactor = 1;
  node.time = new ScaledClock(node.clock, node.drift);
}

/** The memory store's fault hooks for one node's client. */
export function nodeFaults(node: FaultyNode, rng: Random): MemoryFaults {
  return {
    request: () => {
      if (node.partitioned) return { fail: 'before', latencyMs: 500 };
      const latencyMs = node.latencyMs * (0.5 + rng.next());
      if (node.errorRate > 0 && rng.chance(node.errorRate)) {
        return { latencyMs, fail: rng.chance(0.5) ? 'before' : 'after' };
      }
      return { latencyMs };
    },
    notification: () => {
      if (node.partitioned || (node.dropRate > 0 && rng.chance(node.dropRate))) return { drop: true };
      return node.notifyDelayMs > 0 ? { delayMs: rng.range(0, node.notifyDelayMs) } : {};
    },
    hold: () => node.frozen,
  };
}

/** SIGSTOP: timers stop, requests hold; the world's time goes on. */
export function pauseNode(node: FaultyNode): void {
  if (!node.up || node.paused) return;
  node.paused = true;
  node.clock.pause();
  node.frozen = new Promise<void>((resolve) => (node.thaw = resolve));
}

export function resumeNode(node: FaultyNode): void {
  if (!node.paused) return;
  node.paused = false;
  node.clock.resume();
  const thaw = node.thaw;
  node.thaw = undefined;
  node.frozen = undefined;
  thaw?.();
}

export function healNode(node: FaultyNode): void {
  node.partitioned = false;
  node.latencyMs = 1;
  node.errorRate = 0;
  node.dropRate = 0;
  node.notifyDelayMs = 0;
  resumeNode(node);
}

/**
 * The clock-rate fault (opt-in, `clockFaults`): the node's clock runs at `factor` times its usual rate (libfaketime,
 * a starved VM) for `durMs`, or until the process restarts. Stores that check the rate against the server's end the
 * node's sessions with CLOCK_RATE; the oracle must still hold.
 */
export function applyClockRateFault(world: SimWorld, node: FaultyNode, factor: number, durMs: number): boolean {
  const time = node.time;
  if (!node.up || !(time instanceof ScaledClock) || node.clockFactor !== 1) return false;
  node.clockFactor = factor;
  time.setRate(node.drift * factor);
  world.at(world.now() + durMs, () => {
    if (node.time !== time) return; // restarted meanwhile: a new clock at the usual rate
    node.clockFactor = 1;
    time.setRate(node.drift);
  });
  return true;
}

/** Faults that only change a node's knobs for a while. */
export type NodeFaultKind = 'pause' | 'partition' | 'latency' | 'errors' | 'notifications';

/**
 * Start one node fault at the current time and schedule its end `durMs` later. Returns false when it does not
 * apply (the node is down, or already in that fault), so the caller does not count it.
 */
export function applyNodeFault(
  world: SimWorld,
  rng: Random,
  kind: NodeFaultKind,
  node: FaultyNode,
  durMs: number,
): boolean {
  const end = world.now() + durMs;
  switch (kind) {
    case 'pause':
      if (!node.up || node.paused) return false;
      pauseNode(node);
      world.at(end, () => resumeNode(node));
      return true;
    case 'partition':
      if (!node.up || node.partitioned) return false;
      node.partitioned = true;
      world.at(end, () => (node.partitioned = false));
      return true;
    case 'latency':
      // Mostly a slow store; sometimes so slow that requests arrive after the sender's TTL (a request stuck in a
      // network buffer), which is what a coordinator's guard exists for.
      node.latencyMs = rng.chance(0.3) ? rng.range(1000, 3000) : rng.range(5, 400);
      world.at(end, () => (node.latencyMs = 1));
      return true;
    case 'errors':
      node.errorRate = rng.range(0.05, 0.5);
      world.at(end, () => (node.errorRate = 0));
      return true;
    case 'notifications':
      node.dropRate = rng.range(0.2, 1);
      node.notifyDelayMs = rng.range(10, 500);
      world.at(end, () => {
        node.dropRate = 0;
        node.notifyDelayMs = 0;
      });
      return true;
  }
}

/** How a scenario's fault phase is drawn (see scheduleFaults). */
export interface FaultSchedule<K extends string, N extends FaultyNode> {
  /** The first fault comes after `firstMs` plus one gap. */
  readonly firstMs: number;
  /** Mean gap between faults (exponential). */
  readonly meanGapMs: number;
  /** No fault starts after `untilMs − 500`. */
  readonly untilMs: number;
  /** Fault durations are 0.2–3 TTLs. */
  readonly ttlMs: number;
  /** The kinds to draw from (repeat one to make it likelier). */
  readonly kinds: readonly K[];
  readonly nodes: readonly N[];
  /** False once the fault phase is over: scheduled faults that come later do nothing. */
  readonly on: () => boolean;
  readonly count: (kind: string) => void;
  /** The store server everything runs on (its data-loss fault). */
  readonly server: MemoryServer;
  /** kill -9 of a node, and its restart. */
  readonly kill: (node: N) => void;
  readonly start: (node: N) => void;
  /** The scenario's own kinds (everything but a crash and the node faults). */
  readonly other: (kind: K, node: N, durMs: number, atMs: number, upCount: number) => void;
}

const NODE_FAULTS: readonly string[] = ['pause', 'partition', 'latency', 'errors', 'notifications'];

/**
 * The faults every scenario draws (a pause twice as often), before its own kinds. `data-loss`: the store server
 * restarts without persistence — every key and session gone at once — while the drawn node is paused for part of
 * a TTL (the case where a lock vanishes before its holder's deadline).
 */
export const COMMON_FAULTS = [
  'crash',
  'pause',
  'pause',
  'partition',
  'latency',
  'errors',
  'notifications',
  'data-loss',
] as const;

/**
 * Draw a scenario's faults from `rng` and schedule them. The draws per fault, in order: the gap, the kind, the node,
 * the duration — the same for every scenario, so a seed replays exactly.
 */
export function scheduleFaults<K extends string, N extends FaultyNode>(
  world: SimWorld,
  rng: Random,
  plan: FaultSchedule<K, N>,
): void {
  let t = plan.firstMs;
  while (t < plan.untilMs - 500) {
    t += rng.exp(plan.meanGapMs);
    const at = t;
    const kind = rng.pick(plan.kinds);
    const node = plan.nodes[rng.int(0, plan.nodes.length - 1)]!;
    const dur = rng.range(0.2, 3) * plan.ttlMs;
    world.at(at, () => {
      if (!plan.on()) return;
      const upCount = plan.nodes.filter((n) => n.up).length;
      if (kind === 'crash') {
        if (!node.up || upCount <= 1) return;
        plan.count('crash');
        plan.kill(node);
        world.at(at + dur, () => {
          if (plan.on() && !node.up) plan.start(node);
        });
      } else if (kind === 'data-loss') {
        // Not when a node is already paused (its own pause would be cut short) or too few nodes run.
        if (!node.up || node.paused || upCount <= 1) return;
        plan.count('data-loss');
        pauseNode(node);
        world.at(at + Math.min(dur, 0.8 * plan.ttlMs), () => resumeNode(node));
        plan.server.loseData();
      } else if (NODE_FAULTS.includes(kind)) {
        if (applyNodeFault(world, rng, kind as NodeFaultKind, node, dur)) plan.count(kind);
      } else {
        plan.other(kind, node, dur, at, upCount);
      }
    });
  }
}
