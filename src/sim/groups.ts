/**
 * Deterministic simulation of a resource group: the real runtime and protocol
 * code (GroupMember, the cores, the memory store) on virtual time, with
 * faults drawn from a seed. Safety is checked after every step; liveness
 * after the faults stop.
 *
 * Oracle. Every resource is a simulated resource that records which handler
 * did what with which fencing token. A handler counts as *active* while it
 * has not settled, its node is alive, and either it believes it owns the
 * resource (`stillOwner()`), or it was told to stop but its node's lease is
 * still valid (it may be finishing work). Safety: at most one active handler
 * per resource name at every step; no operation is refused for a stale token
 * after its handler checked stillOwner(); coordinator state tokens never go
 * backwards.
 */
import { MemoryServer, MemoryStore, type MemoryFaults } from '../backends/memory/index.js';
import { InvariantError } from '../errors.js';
import type { PlacementStrategy } from '../placement/index.js';
import { shares } from '../placement/index.js';
import { GroupKeys, decodeState, type Protocol } from '../protocol/groups/keys.js';
import { NO_MUTANTS, type MutantName, type Mutants } from '../protocol/mutants.js';
import { GroupMember, joinGroupWith } from '../runtime/groups/member.js';
import { resolveGroupOptions } from '../runtime/groups/options.js';
import type { ResourceContext } from '../runtime/groups/options.js';
import { GroupAdmin } from '../runtime/groups/registry.js';
import {
  healNode,
  applyClockRateFault,
  COMMON_FAULTS,
  scheduleFaults,
  newFaultyNode,
  nodeFaults,
  rebootClock,
  SimWorld,
  type FaultyNode,
} from './world.js';
import { Random } from './random.js';

export interface GroupsSimOptions {
  readonly seed: number;
  readonly protocol: Protocol;
  readonly nodes?: number;
  readonly resources?: number;
  readonly strategy?: PlacementStrategy;
  readonly mutant?: MutantName | undefined;
  /** Virtual time with faults. */
  readonly faultPhaseMs?: number;
  /** Also draw the clock-rate fault (a node's clock at 0.5, 0.75 or 1.25 of its rate for a while). Off by default. */
  readonly clockFaults?: boolean;
  /** False: the store does not check the clock rate (the baseline the check is measured against). Default true. */
  readonly clockRateCheck?: boolean;
}

export interface Violation {
  readonly atMs: number;
  readonly kind: 'double-owner' | 'stale-token' | 'stale-coordinator' | 'overwrite' | 'liveness' | 'invariant';
  readonly detail: string;
}

export interface GroupsSimResult {
  readonly seed: number;
  readonly steps: number;
  readonly virtualMs: number;
  readonly violations: readonly Violation[];
  readonly faults: Readonly<Record<string, number>>;
  readonly ops: number;
  readonly settledAfterMs: number | undefined;
}

/** Bounds of the simulated world (documented in docs/simulation.md). */
export const SIM = {
  ttlMs: 1000,
  driftRate: 0.01,
  workIntervalMs: 50,
  drainTimeoutMs: 1500,
  reconcileIntervalMs: 200,
  /** After the faults stop, every resource must run on exactly one node within this bound. */
  settleBoundMs: 20_000,
} as const;

type HandlerClass = 'prompt' | 'slow' | 'stuck';

interface ActiveHandler {
  readonly node: SimNode;
  readonly ctx: ResourceContext;
  readonly member: GroupMember;
  aborted: boolean;
  settled: boolean;
}

interface SimNode extends FaultyNode {
  readonly id: string;
  readonly index: number;
  store: MemoryStore | undefined;
  member: GroupMember | undefined;
  joining: boolean;
  handlerClass: HandlerClass;
}

export async function runGroupsSim(options: GroupsSimOptions): Promise<GroupsSimResult> {
  return new GroupsSim(options).run();
}

class GroupsSim {
  readonly #o: Required<Omit<GroupsSimOptions, 'mutant'>> & { mutant: MutantName | undefined };
  readonly #mutants: Mutants;
  readonly #rng: Random;
  readonly #faultRng: Random;
  readonly #sim = new SimWorld();
  readonly #world = this.#sim.clock;
  readonly #server: MemoryServer;
  readonly #keys: GroupKeys;
  readonly #admin: GroupAdmin;
  readonly #adminStore: MemoryStore;
  readonly #nodes: SimNode[] = [];
  readonly #handlers = new Set<ActiveHandler>();
  readonly #maxToken = new Map<string, number>();
  readonly #violations: Violation[] = [];
  readonly #faults: Record<string, number> = {};
  #registered = new Set<string>();
  #removed: string[] = [];
  #nextResource = 0;
  #ops = 0;
  #maxStateToken = 0;
  #faultsOn = true;
  /** Junk planted in the state key by a `corrupt` fault, until it is repaired (or lost with the data). */
  #junk: { readonly value: string; readonly sinceMs: number } | undefined;
  /** The junk being planted (its put not yet answered). */
  #junkPending: string | undefined;

  constructor(o: GroupsSimOptions) {
    this.#o = {
      seed: o.seed,
      protocol: o.protocol,
      nodes: o.nodes ?? 5,
      resources: o.resources ?? 12,
      strategy: o.strategy ?? 'sticky-balanced',
      mutant: o.mutant,
      faultPhaseMs: o.faultPhaseMs ?? 30_000,
      clockFaults: o.clockFaults ?? false,
      clockRateCheck: o.clockRateCheck ?? true,
    };
    this.#mutants = o.mutant === undefined ? NO_MUTANTS : new Set([o.mutant]);
    this.#rng = new Random(o.seed);
    this.#faultRng = this.#rng.fork();
    this.#server = new MemoryServer({ clock: this.#world });
    this.#keys = new GroupKeys('sim');
    this.#adminStore = new MemoryStore({
      server: this.#server,
      namespace: 'sim',
      clock: this.#world,
      maxSessionTtlMs: SIM.ttlMs,
    });
    this.#admin = new GroupAdmin(this.#adminStore, 'sim', { mutants: this.#mutants });
  }

  async run(): Promise<GroupsSimResult> {
    const initial = Array.from({ length: this.#o.resources }, () => this.#newResourceName());
    await this.#drive(this.#admin.add(initial));
    initial.forEach((r) => this.#registered.add(r));
    for (let i = 0; i < this.#o.nodes; i++) {
      const node = this.#newNode(i);
      this.#nodes.push(node);
      this.#startNode(node);
    }
    this.#scheduleFaults();
    await this.#runUntil(this.#o.faultPhaseMs);
    if (this.#unsafe()) return this.#result(undefined);
    // Liveness phase: heal everything, then every resource must settle on exactly one node.
    this.#faultsOn = false;
    this.#healAll();
    const settledAfter = await this.#sim.settle(
      SIM.settleBoundMs,
      () => {
        this.#check();
        return !this.#unsafe();
      },
      () => this.#settled(),
    );
    if (settledAfter === 'unsafe') return this.#result(undefined);
    if (settledAfter === undefined) {
      this.#violations.push({ atMs: this.#world.now(), kind: 'liveness', detail: this.#livenessDetail() });
    }
    return this.#result(settledAfter);
  }

  #unsafe(): boolean {
    return this.#violations.some((v) => v.kind !== 'liveness');
  }

  #result(settledAfterMs: number | undefined): GroupsSimResult {
    for (const n of this.#nodes) this.#kill(n);
    return {
      seed: this.#o.seed,
      steps: this.#sim.steps,
      virtualMs: Math.round(this.#world.now()),
      violations: this.#violations,
      faults: this.#faults,
      ops: this.#ops,
      settledAfterMs: settledAfterMs === undefined ? undefined : Math.round(settledAfterMs),
    };
  }

  // ---- the world loop ------------------------------------------------------------------

  /** Advance virtual time to `untilMs`, one timer at a time, checking safety after each step. */
  async #runUntil(untilMs: number): Promise<void> {
    await this.#sim.runUntil(untilMs, () => {
      this.#check();
      return !this.#unsafe();
    });
  }

  /** Await a promise while letting virtual time run (up to a bound). */
  #drive<T>(p: Promise<T>, boundMs = 60_000): Promise<T> {
    return this.#sim.drive(p, boundMs);
  }

  // ---- nodes ------------------------------------------------------------------

  #newNode(index: number): SimNode {
    const drift = 1 + this.#rng.range(-SIM.driftRate, SIM.driftRate);
    return Object.assign(newFaultyNode(this.#sim, drift), {
      id: `n${index}`,
      index,
      store: undefined,
      member: undefined,
      joining: false,
      handlerClass: this.#rng.pick<HandlerClass>(['prompt', 'prompt', 'slow', 'slow', 'stuck']),
    });
  }

  #faultsFor(node: SimNode): MemoryFaults {
    return {
      ...nodeFaults(node, this.#faultRng),
      skipDelayedRestart: this.#mutants.has('no-delayed-restart'),
      skipClockRateCheck: !this.#o.clockRateCheck,
    };
  }

  #startNode(node: SimNode): void {
    rebootClock(this.#sim, node);
    node.store = new MemoryStore({
      server: this.#server,
      namespace: 'sim',
      clock: node.time,
      maxClockDriftRate: SIM.driftRate,
      maxSessionTtlMs: SIM.ttlMs,
      requestTimeoutMs: 2000,
      faults: this.#faultsFor(node),
    });
    node.up = true;
    node.joining = true;
    const rng = this.#rng.fork();
    const store = node.store;
    let member: GroupMember | undefined;
    joinGroupWith(
      resolveGroupOptions({
        store,
        group: 'sim',
        node: { id: node.id, zone: `z${node.index % 3}`, weight: 1 },
        protocol: this.#o.protocol,
        strategy: this.#o.strategy,
        sessionTtlMs: SIM.ttlMs,
        drainTimeoutMs: SIM.drainTimeoutMs,
        reconcileIntervalMs: SIM.reconcileIntervalMs,
        joinTimeoutMs: SIM.ttlMs * 3,
        restartBackoff: { initialMs: 100, maxMs: 1000 },
        clock: node.time,
        random: () => rng.next(),
        handler: (ctx: ResourceContext) => this.#handler(node, () => member, ctx),
      }),
      { mutants: this.#mutants },
    ).then(
      (m) => {
        if (node.store !== store) {
          void m.leave();
          return;
        }
        member = m;
        node.member = m;
        node.joining = false;
        // A broken invariant inside the library is a violation too (the runtime reports it and leaves).
        m.on('error', ({ error, context }) => {
          if (error instanceof InvariantError)
            this.#violations.push({
              atMs: this.#world.now(),
              kind: 'invariant',
              detail: `${node.id} ${context}: ${error.message}`,
            });
        });
        if (process.env['REBALANCER_SIM_TRACE'] !== undefined) {
          const log = (what: string) => (e: unknown) =>
            process.stderr.write(
              `${this.#world.now().toFixed(0)} ${node.id} ${what} ${e instanceof Object ? JSON.stringify(e, (_k, v: unknown) => (v instanceof Error ? `${v.name}: ${v.message}` : v)) : ''}\n`,
            );
          for (const ev of [
            'sessionLost',
            'left',
            'error',
            'fenced',
            'unfenced',
            'joined',
            'coordinatorElected',
            'assigned',
            'revoked',
            'released',
            'handlerStuck',
          ] as const)
            m.on(ev, log(ev));
        }
      },
      () => {
        node.joining = false;
        // Could not join (e.g. the previous incarnation's session still lives): try again later.
        if (node.store === store && node.up) {
          this.#at(this.#world.now() + 500, () => {
            if (node.store === store && node.up && node.member === undefined) this.#restart(node);
          });
        }
      },
    );
  }

  /** kill -9: nothing of the process runs again; its session expires by TTL. */
  #kill(node: SimNode): void {
    node.up = false;
    node.clock.kill();
    node.store?.crash();
    node.thaw?.();
    node.thaw = undefined;
    node.frozen = undefined;
    node.paused = false;
    for (const h of this.#handlers) if (h.node === node) h.settled = true;
    node.member = undefined;
    node.store = undefined;
  }

  #restart(node: SimNode): void {
    this.#kill(node);
    this.#startNode(node);
  }

  // ---- handlers and the oracle ------------------------------------------------------------------

  async #handler(node: SimNode, member: () => GroupMember | undefined, ctx: ResourceContext): Promise<void> {
    const m = member() ?? node.member;
    if (m === undefined) return;
    const h: ActiveHandler = { node, ctx, member: m, aborted: false, settled: false };
    this.#handlers.add(h);
    const time = node.time;
    const sleep = (ms: number, wakeOnAbort: boolean): Promise<void> =>
      new Promise((resolve) => {
        const onAbort = (): void => {
          time.clearTimeout(t);
          resolve();
        };
        const t = time.setTimeout(() => {
          ctx.signal.removeEventListener('abort', onAbort);
          resolve();
        }, ms);
        if (wakeOnAbort) ctx.signal.addEventListener('abort', onAbort, { once: true });
      });
    try {
      while (!ctx.signal.aborted) {
        if (ctx.stillOwner()) this.#operate(h);
        await sleep(SIM.workIntervalMs, true);
      }
      h.aborted = true;
      // Winding down takes time; "stuck" handlers take longer than the drain timeout.
      const stop =
        node.handlerClass === 'prompt' ? 1 : node.handlerClass === 'slow' ? SIM.ttlMs / 10 : SIM.drainTimeoutMs * 1.5;
      await sleep(stop, false);
    } finally {
      h.settled = true;
      this.#handlers.delete(h);
    }
  }

  /** A side effect on the simulated resource, carrying the fencing token. */
  #operate(h: ActiveHandler): void {
    this.#ops++;
    const r = h.ctx.resource;
    const max = this.#maxToken.get(r) ?? 0;
    if (h.ctx.fencingToken < max) {
      this.#violations.push({
        atMs: this.#world.now(),
        kind: 'stale-token',
        detail: `${h.node.id} acted on ${r} with token ${h.ctx.fencingToken} after token ${max} (stillOwner() was true)`,
      });
      return;
    }
    this.#maxToken.set(r, h.ctx.fencingToken);
  }

  #isActive(h: ActiveHandler): boolean {
    if (h.settled || !h.node.up || h.node.member !== h.member) return false;
    if (h.ctx.stillOwner()) return true;
    // Told to stop but not yet stopped: still working while its lease is valid.
    return h.aborted && h.node.time.now() < h.member.leaseDeadlineMs;
  }

  #check(): void {
    const byResource = new Map<string, ActiveHandler[]>();
    for (const h of this.#handlers) {
      if (!this.#isActive(h)) continue;
      const list = byResource.get(h.ctx.resource) ?? [];
      list.push(h);
      byResource.set(h.ctx.resource, list);
    }
    for (const [r, hs] of byResource) {
      if (hs.length > 1) {
        this.#violations.push({
          atMs: this.#world.now(),
          kind: 'double-owner',
          detail: `${r} active on ${hs.map((h) => `${h.node.id}(token ${h.ctx.fencingToken}${h.aborted ? ', stopping' : ''})`).join(' and ')}`,
        });
      }
    }
    // Coordinator fencing: the state's coordinator token never goes backwards.
    const st = this.#server.namespace('sim').keys.get(this.#keys.state);
    // What could not be read is never overwritten: planted junk stays until the repair (or a data loss takes it).
    const junk = this.#junk;
    if (junk !== undefined && st === undefined) this.#junk = undefined;
    else if (junk !== undefined && st !== undefined && st.value !== junk.value) {
      this.#violations.push({
        atMs: this.#world.now(),
        kind: 'overwrite',
        detail: `the unreadable state planted at ${Math.round(junk.sinceMs)} ms was overwritten with ${st.value}`,
      });
    }
    if (st !== undefined) {
      try {
        const s = decodeState(this.#keys.state, st.value);
        if (s.token < this.#maxStateToken) {
          this.#violations.push({
            atMs: this.#world.now(),
            kind: 'stale-coordinator',
            detail: `state written by coordinator token ${s.token} after token ${this.#maxStateToken}`,
          });
        }
        this.#maxStateToken = Math.max(this.#maxStateToken, s.token);
      } catch {
        // Unreadable state is the runtime's problem to report, not a safety violation.
      }
    }
  }

  // ---- faults ------------------------------------------------------------------

  #at(atMs: number, fn: () => void): void {
    this.#world.setTimeout(fn, Math.max(0, atMs - this.#world.now()));
  }

  #count(kind: string): void {
    this.#faults[kind] = (this.#faults[kind] ?? 0) + 1;
  }

  #scheduleFaults(): void {
    const rng = this.#faultRng;
    scheduleFaults(this.#sim, rng, {
      firstMs: 500,
      meanGapMs: 400,
      untilMs: this.#o.faultPhaseMs,
      ttlMs: SIM.ttlMs,
      kinds: [
        ...COMMON_FAULTS,
        'churn',
        'churn',
        'readd',
        'leave',
        'corrupt',
        ...(this.#o.clockFaults === true ? (['clock-rate'] as const) : []),
      ] as const,
      nodes: this.#nodes,
      server: this.#server,
      on: () => this.#faultsOn,
      count: (kind) => this.#count(kind),
      kill: (node) => this.#kill(node),
      start: (node) => this.#startNode(node),
      other: (kind, node, dur, at, upCount) => {
        switch (kind) {
          case 'clock-rate': {
            const factor = rng.pick([0.5, 0.75, 1.25]);
            if (applyClockRateFault(this.#sim, node, factor, dur * 3)) {
              this.#count('clock-rate');
              if (process.env['REBALANCER_SIM_TRACE'] !== undefined)
                process.stderr.write(
                  `${this.#world.now().toFixed(0)} ${node.id} clock-rate ${factor} for ${(dur * 3).toFixed(0)}\n`,
                );
            }
            return;
          }
          case 'churn': {
            this.#count('churn');
            const names = [...this.#registered];
            if (rng.chance(0.5) && names.length > 2) {
              const r = rng.pick(names);
              this.#registered.delete(r);
              this.#removed.push(r);
              void this.#admin.remove([r]).catch(() => undefined);
            } else {
              const r = this.#newResourceName();
              this.#registered.add(r);
              void this.#admin.add([r]).catch(() => undefined);
            }
            return;
          }
          case 'readd': {
            // Remove a resource and add the same name again shortly after (the original Rebalanser's bug).
            const names = [...this.#registered];
            if (names.length === 0) return;
            this.#count('readd');
            const r = rng.pick(names);
            this.#registered.delete(r);
            void this.#admin.remove([r]).catch(() => undefined);
            this.#at(at + rng.range(5, 150), () => {
              this.#registered.add(r);
              void this.#admin.add([r]).catch(() => undefined);
            });
            return;
          }
          case 'corrupt': {
            // Junk in the state key (written by something that is not Rebalancer), repaired after `dur`.
            if (this.#junk !== undefined || this.#junkPending !== undefined) return;
            this.#count('corrupt');
            const value = `not Rebalancer's state ${Math.round(at)}`;
            this.#junkPending = value;
            void this.#adminStore
              .txn({ compare: [], then: [{ op: 'put', key: this.#keys.state, value }] })
              .then(
                () => {
                  // Checked from the step after the put on (a value seen before it is no overwrite).
                  if (this.#junkPending === value) this.#junk = { value, sinceMs: at };
                },
                () => undefined,
              )
              .finally(() => {
                if (this.#junkPending === value) this.#junkPending = undefined;
              });
            this.#at(at + dur, () => this.#repairJunk(value));
            return;
          }
          case 'leave': {
            const m = node.member;
            if (m === undefined || upCount <= 1 || node.paused) return;
            this.#count('leave');
            node.member = undefined;
            void m.leave().finally(() => {
              this.#at(this.#world.now() + dur, () => {
                if (this.#faultsOn && node.up && node.member === undefined && !node.joining) this.#restart(node);
              });
            });
            return;
          }
        }
      },
    });
  }

  /** The operator's repair: delete the junk (only if it is still the junk). */
  #repairJunk(value: string | undefined = this.#junk?.value ?? this.#junkPending): void {
    if (value === undefined) return;
    if (this.#junk?.value === value) this.#junk = undefined;
    if (this.#junkPending === value) this.#junkPending = undefined;
    void this.#adminStore
      .txn({
        compare: [{ key: this.#keys.state, target: 'value', op: '=', value }],
        then: [{ op: 'delete', key: this.#keys.state }],
      })
      .catch(() => undefined);
  }

  #healAll(): void {
    this.#repairJunk();
    for (const n of this.#nodes) {
      healNode(n);
      if (!n.up || (n.member === undefined && !n.joining)) this.#restart(n);
    }
    // Bring the registry in step with what the simulation believes is registered.
    void this.#admin.add([...this.#registered]).catch(() => undefined);
  }

  #newResourceName(): string {
    return `r${this.#nextResource++}`;
  }

  // ---- liveness ------------------------------------------------------------------

  #activeCounts(): Map<string, string[]> {
    const owners = new Map<string, string[]>();
    for (const h of this.#handlers) {
      if (!this.#isActive(h) || h.aborted) continue;
      const list = owners.get(h.ctx.resource) ?? [];
      list.push(h.node.id);
      owners.set(h.ctx.resource, list);
    }
    return owners;
  }

  #settled(): boolean {
    const owners = this.#activeCounts();
    const registered = this.#registryNow();
    for (const r of registered) if ((owners.get(r)?.length ?? 0) !== 1) return false;
    for (const r of owners.keys()) if (!registered.has(r)) return false;
    if (this.#o.strategy === 'rendezvous') return true;
    const live = this.#nodes.filter((n) => n.up && n.member !== undefined);
    const perNode = new Map<string, number>();
    for (const [, ns] of owners) for (const n of ns) perNode.set(n, (perNode.get(n) ?? 0) + 1);
    const share = shares(
      live.map((n) => ({ id: n.id })),
      registered.size,
    );
    for (const [id, s] of share) if (Math.abs((perNode.get(id) ?? 0) - s) >= 1 + 1e-9) return false;
    return true;
  }

  #registryNow(): Set<string> {
    const set = new Set<string>();
    for (const key of this.#server.namespace('sim').keys.keys()) {
      if (key.startsWith(this.#keys.resources)) set.add(key.slice(this.#keys.resources.length));
    }
    return set;
  }

  #livenessDetail(): string {
    const owners = this.#activeCounts();
    const problems: string[] = [];
    for (const r of this.#registryNow()) {
      const n = owners.get(r)?.length ?? 0;
      if (n !== 1) problems.push(`${r} active on ${n} nodes`);
    }
    const counts = new Map<string, number>();
    for (const [, ns] of owners) for (const n of ns) counts.set(n, (counts.get(n) ?? 0) + 1);
    const members = [...this.#server.namespace('sim').keys.keys()]
      .filter((k) => k.startsWith(this.#keys.members))
      .map((k) => k.slice(this.#keys.members.length));
    const nodes = this.#nodes.map(
      (n) =>
        `${n.id}:${n.up ? 'up' : 'down'}${n.member === undefined ? (n.joining ? '/joining' : '/no-member') : `/${n.member.assignment().length}`}`,
    );
    return `not settled ${SIM.settleBoundMs} ms after the faults stopped: ${problems.slice(0, 5).join('; ') || 'unbalanced'}; per node ${JSON.stringify(Object.fromEntries(counts))}; members ${members.join(',')}; nodes ${nodes.join(' ')}`;
  }
}
