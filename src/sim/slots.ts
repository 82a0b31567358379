/**
 * Deterministic simulation of a slots cluster: the real SlotsMember runtime and
 * protocol cores on the memory store and virtual time, with faults drawn from
 * a seed (crashes, SIGSTOP past the TTL, partitions, slow and failing
 * requests, lost notifications, graceful leaves, joins). The application of
 * each site migrates a slot in a random time, releases what it may, and
 * writes to its primary slots, carrying the epoch.
 *
 * Oracle, outside the library:
 *  - one primary: at every step at most one live site's isPrimary(slot) is
 *    true (a paused site counts: its monotonic time runs on, so isPrimary()
 *    turns false by itself), and no write carries an epoch below one already
 *    written for that slot (stale primary);
 *  - releases: when a release commits, the other live sites whose ready bit
 *    the store holds for the slot are at least as many as the release
 *    required, or at least min(R, other established sites) — so a release
 *    that did not check (or whose check raced) is caught; and no release
 *    counts a site whose process had been killed before the release was asked
 *    for (its keys live on until its session expires; issue 12 item 10);
 *  - liveness: after the faults stop, within a bound, every slot has exactly
 *    min(R, sites) ready replicas and one primary, and every site's routing
 *    table is the same.
 */
import { MemoryServer, MemoryStore } from '../backends/memory/index.js';
import { InvariantError } from '../errors.js';
import { NO_MUTANTS, type Mutants, type SlotsMutantName } from '../protocol/mutants.js';
import { decodeReady, hasReady, SlotKeys } from '../protocol/slots/keys.js';
import { joinSlotsWith, type SlotsMember } from '../runtime/slots/member.js';
import { resolveSlotsOptions } from '../runtime/slots/options.js';
import { Random } from './random.js';
import {
  healNode,
  COMMON_FAULTS,
  scheduleFaults,
  newFaultyNode,
  nodeFaults,
  rebootClock,
  resumeNode,
  SimWorld,
  type FaultyNode,
} from './world.js';

export interface SlotsSimOptions {
  readonly seed: number;
  readonly sites?: number | undefined;
  readonly slots?: number | undefined;
  readonly replicas?: number | undefined;
  readonly mutant?: SlotsMutantName | undefined;
  readonly faultPhaseMs?: number | undefined;
  /**
   * Instead of random faults, one scenario (issue 12 item 10): once the cluster has settled, a site that is not the
   * coordinator crashes and at once another one leaves gracefully, with quick migrations — so the leave's releases
   * run while the crashed site's session (and its ready bits) still live.
   */
  readonly crashAndLeave?: boolean | undefined;
}

export interface SlotsViolation {
  readonly atMs: number;
  readonly kind:
    'double-primary' | 'stale-epoch' | 'release-below-r' | 'release-counted-crashed' | 'liveness' | 'invariant';
  readonly detail: string;
}

export interface SlotsSimResult {
  readonly seed: number;
  readonly steps: number;
  readonly virtualMs: number;
  readonly violations: readonly SlotsViolation[];
  readonly faults: Readonly<Record<string, number>>;
  readonly writes: number;
  readonly releases: number;
  readonly settledAfterMs: number | undefined;
}

export const SLOTS_SIM = {
  ttlMs: 1000,
  driftRate: 0.01,
  writeIntervalMs: 50,
  reconcileIntervalMs: 200,
  settleBoundMs: 30_000,
} as const;

interface SimSite extends FaultyNode {
  readonly id: string;
  readonly index: number;
  store: MemoryStore | undefined;
  site: SlotsMember | undefined;
  starting: boolean;
  /** How long this site's application takes to migrate a slot in. */
  migrateMs: number;
  /** When its process was last killed, until a new process registered (its old keys may live on for a TTL). */
  killedAtMs: number | undefined;
}

export async function runSlotsSim(options: SlotsSimOptions): Promise<SlotsSimResult> {
  return new SlotsSim(options).run();
}

class SlotsSim {
  readonly #seed: number;
  readonly #siteCount: number;
  readonly #slots: number;
  readonly #R: number;
  readonly #faultPhaseMs: number;
  readonly #crashAndLeave: boolean;
  readonly #mutants: Mutants;
  readonly #rng: Random;
  readonly #faultRng: Random;
  readonly #world = new SimWorld();
  readonly #server: MemoryServer;
  readonly #keys = new SlotKeys('sim');
  readonly #sites: SimSite[] = [];
  readonly #violations: SlotsViolation[] = [];
  readonly #faults: Record<string, number> = {};
  readonly #maxEpoch: number[];
  #writes = 0;
  #releases = 0;
  #faultsOn = true;

  constructor(o: SlotsSimOptions) {
    this.#seed = o.seed;
    this.#siteCount = o.sites ?? 4;
    this.#slots = o.slots ?? 24;
    this.#R = o.replicas ?? 2;
    this.#crashAndLeave = o.crashAndLeave === true;
    this.#faultPhaseMs = o.faultPhaseMs ?? (this.#crashAndLeave ? 10_000 : 30_000);
    this.#mutants = o.mutant === undefined ? NO_MUTANTS : new Set([o.mutant]);
    this.#rng = new Random(o.seed);
    this.#faultRng = this.#rng.fork();
    this.#server = new MemoryServer({ clock: this.#world.clock });
    this.#maxEpoch = new Array<number>(this.#slots).fill(0);
  }

  async run(): Promise<SlotsSimResult> {
    for (let i = 0; i < this.#siteCount; i++) {
      const s = this.#newSite(i);
      this.#sites.push(s);
      this.#start(s);
    }
    if (this.#crashAndLeave) this.#scheduleCrashAndLeave();
    else this.#scheduleFaults();
    this.#scheduleWrites();
    if (!(await this.#world.runUntil(this.#faultPhaseMs, () => this.#check()))) return this.#result(undefined);
    this.#faultsOn = false;
    for (const s of this.#sites) {
      healNode(s);
      if (!s.up || (s.site === undefined && !s.starting)) this.#restart(s);
    }
    const settledAfter = await this.#world.settle(
      SLOTS_SIM.settleBoundMs,
      () => this.#check(),
      () => this.#settled(),
    );
    if (settledAfter === 'unsafe') return this.#result(undefined);
    if (settledAfter === undefined) {
      this.#violations.push({ atMs: this.#world.now(), kind: 'liveness', detail: this.#livenessDetail() });
    }
    return this.#result(settledAfter);
  }

  #result(settledAfterMs: number | undefined): SlotsSimResult {
    for (const s of this.#sites) this.#kill(s);
    return {
      seed: this.#seed,
      steps: this.#world.steps,
      virtualMs: Math.round(this.#world.now()),
      violations: this.#violations,
      faults: this.#faults,
      writes: this.#writes,
      releases: this.#releases,
      settledAfterMs: settledAfterMs === undefined ? undefined : Math.round(settledAfterMs),
    };
  }

  // ---- sites ------------------------------------------------------------------

  #newSite(index: number): SimSite {
    const node = newFaultyNode(this.#world, 1 + this.#rng.range(-SLOTS_SIM.driftRate, SLOTS_SIM.driftRate));
    return Object.assign(node, {
      id: `s${index}`,
      index,
      store: undefined,
      site: undefined,
      starting: false,
      migrateMs: this.#rng.pick([5, 50, 300, 1500]),
      killedAtMs: undefined,
    });
  }

  #start(node: SimSite): void {
    rebootClock(this.#world, node);
    const store = new MemoryStore({
      server: this.#server,
      namespace: 'sim',
      clock: node.time,
      maxClockDriftRate: SLOTS_SIM.driftRate,
      requestTimeoutMs: 2000,
      maxSessionTtlMs: SLOTS_SIM.ttlMs,
      faults: {
        ...nodeFaults(node, this.#faultRng),
        skipDelayedRestart: this.#mutants.has('slots-no-delayed-restart'),
      },
    });
    node.store = store;
    node.up = true;
    node.starting = true;
    const options = resolveSlotsOptions({
      store,
      cluster: 'sim',
      node: { id: node.id, zone: `z${node.index % 2}`, address: `${node.id}:1` },
      slotCount: this.#slots,
      replicas: this.#R,
      minNodes: 1,
      sessionTtlMs: SLOTS_SIM.ttlMs,
      reconcileIntervalMs: SLOTS_SIM.reconcileIntervalMs,
      leaveTimeoutMs: 10_000,
      clock: node.time,
    });
    joinSlotsWith(options, { mutants: this.#mutants }).then(
      (site) => {
        node.starting = false;
        if (node.store !== store) {
          void site.leave();
          return;
        }
        node.site = site;
        node.killedAtMs = undefined;
        // Subscribed as soon as the member exists: its events are held until the next timer turn.
        this.#subscribe(node, site);
      },
      (error: unknown) => {
        node.starting = false;
        if (process.env['REBALANCER_SIM_TRACE'] !== undefined) {
          process.stderr.write(`${this.#world.now().toFixed(0)} ${node.id} startFailed ${String(error)}\n`);
        }
        if (node.store === store && node.up) {
          this.#world.at(this.#world.now() + 500, () => {
            if (node.store === store && node.up && node.site === undefined) this.#restart(node);
          });
        }
      },
    );
  }

  /** The simulated application: migrate in migrateMs, release what it may; the oracle hears every release. */
  #subscribe(node: SimSite, site: SlotsMember): void {
    const time = node.time;
    site.on('prepare', ({ slots }) => {
      for (const s of slots) {
        time.setTimeout(() => {
          if (node.site === site && site.slots().get(s) === 'preparing') void site.markReady(s).catch(() => undefined);
        }, node.migrateMs);
      }
    });
    site.on('releasable', ({ slots }) => {
      for (const s of slots) {
        time.setTimeout(() => {
          // A refusal is a result; a store fault rejects: the next releasable announcement retries either way.
          if (node.site !== site) return;
          // Sites whose process was dead when the release was asked for: it must not count them.
          const dead = new Map(this.#sites.filter((n) => n.killedAtMs !== undefined).map((n) => [n.id, n]));
          const askedAtMs = this.#world.now();
          void site.release(s).then(
            (r) => {
              if (!r.released) return;
              const counted = r.readyElsewhere.filter((x) => {
                const n = dead.get(x);
                return n?.killedAtMs !== undefined && n.killedAtMs <= askedAtMs;
              });
              if (counted.length > 0) {
                this.#violations.push({
                  atMs: this.#world.now(),
                  kind: 'release-counted-crashed',
                  detail: `${node.id} released slot ${s} counting ${counted.join(', ')} as ready, crashed before the release was asked for`,
                });
              }
            },
            () => undefined,
          );
        }, 1);
      }
    });
    site.on('released', (e) => this.#onReleased(node, e));
    // A broken invariant inside the library is a violation too (the runtime reports it and leaves).
    site.on('error', ({ error, context }) => {
      if (error instanceof InvariantError) {
        this.#violations.push({
          atMs: this.#world.now(),
          kind: 'invariant',
          detail: `${node.id} ${context}: ${error.message}`,
        });
      }
    });
    if (process.env['REBALANCER_SIM_TRACE'] !== undefined) {
      for (const ev of [
        'joined',
        'primaryGained',
        'primaryLost',
        'released',
        'slotsDropped',
        'fenced',
        'sessionLost',
        'error',
      ] as const) {
        site.on(ev, (e: unknown) =>
          process.stderr.write(
            `${this.#world.now().toFixed(0)} ${node.id} ${ev} ${JSON.stringify(e, (_k, v: unknown) => (v instanceof Error ? `${v.name}: ${v.message}` : v))}\n`,
          ),
        );
      }
    }
  }

  #kill(node: SimSite): void {
    if (node.up) node.killedAtMs = this.#world.now();
    node.up = false;
    node.clock.kill();
    node.store?.crash();
    resumeNode(node);
    node.site = undefined;
    node.store = undefined;
  }

  #restart(node: SimSite): void {
    this.#kill(node);
    this.#start(node);
  }

  // ---- the application's writes and the oracle ------------------------------------------------------

  #scheduleWrites(): void {
    const tick = (): void => {
      for (const node of this.#sites) {
        const site = node.site;
        if (site === undefined || !node.up || node.paused) continue;
        for (let s = 0; s < this.#slots; s++) {
          if (!site.isPrimary(s)) continue;
          const epoch = site.epoch(s) ?? 0;
          this.#writes++;
          if (epoch < this.#maxEpoch[s]!) {
            this.#violations.push({
              atMs: this.#world.now(),
              kind: 'stale-epoch',
              detail: `${node.id} wrote slot ${s} with epoch ${epoch} after epoch ${this.#maxEpoch[s]} (isPrimary() was true)`,
            });
          }
          this.#maxEpoch[s] = Math.max(this.#maxEpoch[s]!, epoch);
        }
      }
      this.#world.at(this.#world.now() + SLOTS_SIM.writeIntervalMs, tick);
    };
    this.#world.at(SLOTS_SIM.writeIntervalMs, tick);
  }

  /** The store as it is right now (the server's own state, not any site's view): bitmaps and their mod revisions. */
  #serverReady(): Map<string, { bits: Uint8Array; modRevision: number }> {
    const out = new Map<string, { bits: Uint8Array; modRevision: number }>();
    for (const [key, kv] of this.#server.namespace('sim').keys) {
      if (!key.startsWith(this.#keys.ready)) continue;
      try {
        out.set(key.slice(this.#keys.ready.length), {
          bits: decodeReady(key, kv.value, this.#slots),
          modRevision: kv.modRevision,
        });
      } catch {
        // not ours to judge
      }
    }
    return out;
  }

  #onReleased(
    node: SimSite,
    e: {
      readonly slot: number;
      readonly readyElsewhere: readonly string[];
      readonly needed: number;
      readonly failed: boolean;
      readonly revision: number;
    },
  ): void {
    this.#releases++;
    if (e.failed) return;
    const ready = this.#serverReady();
    const siteKeys = [...this.#server.namespace('sim').keys.keys()]
      .filter((k) => k.startsWith(this.#keys.sites))
      .map((k) => k.slice(this.#keys.sites.length));
    let elsewhere = 0;
    let established = 0;
    for (const [id, r] of ready) {
      if (id === node.id) continue;
      if (hasReady(r.bits, e.slot)) elsewhere++;
      if (siteKeys.includes(id) && r.bits.some((b) => b !== 0)) established++;
    }
    // A counted replica whose session expired between the commit and this moment (the answer travels with
    // latency) is a crash, and one whose bitmap changed after the commit may have released the slot itself
    // meanwhile (checked by its own release); a counted replica whose bitmap is the one the release compared and
    // that is not ready is a broken check.
    const brokenCount = e.readyElsewhere.some((x) => {
      const r = ready.get(x);
      return r !== undefined && r.modRevision <= e.revision && !hasReady(r.bits, e.slot);
    });
    const tooFew = e.readyElsewhere.length < e.needed && elsewhere < Math.min(this.#R, established);
    if (brokenCount || tooFew) {
      const state = (x: string): string => {
        const r = ready.get(x);
        return r === undefined ? 'gone' : hasReady(r.bits, e.slot) ? 'ready' : `not ready since r${r.modRevision}`;
      };
      this.#violations.push({
        atMs: this.#world.now(),
        kind: 'release-below-r',
        detail:
          `${node.id} released slot ${e.slot} at r${e.revision} leaving ${elsewhere} ready replica(s) elsewhere ` +
          `(needed ${e.needed}, ${established} established sites; it counted ` +
          `${e.readyElsewhere.map((x) => `${x}:${state(x)}`).join(', ')})`,
      });
    }
  }

  /** Safety after every step; false stops the run. */
  #check(): boolean {
    for (let s = 0; s < this.#slots; s++) {
      const primaries: string[] = [];
      for (const node of this.#sites) if (node.up && node.site?.isPrimary(s) === true) primaries.push(node.id);
      if (primaries.length > 1) {
        this.#violations.push({
          atMs: this.#world.now(),
          kind: 'double-primary',
          detail: `slot ${s}: ${primaries.map((id) => `${id}(epoch ${this.#sites.find((n) => n.id === id)?.site?.epoch(s) ?? '?'})`).join(' and ')} both primary`,
        });
      }
    }
    return !this.#violations.some((v) => v.kind !== 'liveness');
  }

  // ---- faults ------------------------------------------------------------------

  #count(kind: string): void {
    this.#faults[kind] = (this.#faults[kind] ?? 0) + 1;
  }

  #scheduleFaults(): void {
    const rng = this.#faultRng;
    scheduleFaults(this.#world, rng, {
      firstMs: 1000,
      meanGapMs: 600,
      untilMs: this.#faultPhaseMs,
      ttlMs: SLOTS_SIM.ttlMs,
      kinds: [...COMMON_FAULTS, 'leave', 'leave', 'slow-migration'] as const,
      nodes: this.#sites,
      server: this.#server,
      on: () => this.#faultsOn,
      count: (kind) => this.#count(kind),
      kill: (node) => this.#kill(node),
      start: (node) => this.#start(node),
      other: (kind, node, dur, _at, upCount) => {
        switch (kind) {
          case 'slow-migration':
            this.#count('slow-migration');
            node.migrateMs = rng.pick([5, 50, 300, 1500, 4000]);
            return;
          case 'leave': {
            if (upCount <= 1) return;
            if (this.#leave(node, dur)) this.#count('leave');
            return;
          }
        }
      },
    });
  }

  #scheduleCrashAndLeave(): void {
    const tryAt = (t: number): void =>
      this.#world.at(t, () => {
        const running = this.#sites.filter((n) => n.up && n.site !== undefined);
        // Neither is the coordinator: a crashed coordinator (or one whose next in line is the crashed site) plans
        // nothing until the session expires, and then the crashed site no longer counts anyway.
        const others = running.filter((n) => n.site?.isCoordinator !== true);
        if (running.length < this.#sites.length || others.length < 2 || !this.#settled()) {
          tryAt(t + 100);
          return;
        }
        const crashed = others[this.#seed % others.length]!;
        const leaver = others[(this.#seed + 1) % others.length]!;
        this.#count('crash-and-leave');
        if (process.env['REBALANCER_SIM_TRACE'] !== undefined) {
          process.stderr.write(`${this.#world.now().toFixed(0)} crash ${crashed.id}, leave ${leaver.id}\n`);
        }
        for (const n of running) n.migrateMs = 5;
        this.#kill(crashed);
        this.#leave(leaver, 0);
      });
    tryAt(1000);
  }

  /** A graceful leave; the site comes back after `dur` (at once once the faults have stopped). */
  #leave(node: SimSite, dur: number): boolean {
    const site = node.site;
    if (site === undefined || node.paused) return false;
    void site.leave().finally(() => {
      if (node.site === site) node.site = undefined;
      // It comes back after a while — at once if the faults have stopped meanwhile (the heal phase
      // brings every site back).
      this.#world.at(this.#world.now() + (this.#faultsOn ? dur : 0), () => {
        if (node.up && node.site === undefined && !node.starting) this.#restart(node);
      });
    });
    return true;
  }

  // ---- liveness ------------------------------------------------------------------

  #settled(): boolean {
    const live = this.#sites.filter((n) => n.up && n.site !== undefined);
    if (live.length !== this.#sites.length) return false;
    const want = Math.min(this.#R, live.length);
    const first = live[0]!.site!;
    for (let s = 0; s < this.#slots; s++) {
      const ready = live.filter((n) => n.site!.slots().get(s) === 'ready').length;
      const primaries = live.filter((n) => n.site!.isPrimary(s)).length;
      if (ready !== want || primaries !== 1) return false;
      const route = JSON.stringify(first.route(s));
      if (live.some((n) => JSON.stringify(n.site!.route(s)) !== route)) return false;
      if (first.route(s).primary === undefined || first.route(s).secondaries.length !== want - 1) return false;
    }
    for (const n of live) if ([...n.site!.slots().values()].some((st) => st !== 'ready')) return false;
    return true;
  }

  #livenessDetail(): string {
    const parts: string[] = [];
    for (const n of this.#sites) {
      const st = n.site?.slots();
      const ready = st === undefined ? 0 : [...st.values()].filter((x) => x === 'ready').length;
      const preparing = st === undefined ? 0 : [...st.values()].filter((x) => x === 'preparing').length;
      parts.push(
        `${n.id}:${n.up ? 'up' : 'down'}${n.site === undefined ? (n.starting ? '/starting' : '/no-site') : `/ready ${ready} preparing ${preparing}`}`,
      );
    }
    const missing: string[] = [];
    for (let s = 0; s < this.#slots && missing.length < 5; s++) {
      const ready = this.#sites.filter((n) => n.site?.slots().get(s) === 'ready').length;
      const primaries = this.#sites.filter((n) => n.site?.isPrimary(s) === true).length;
      if (ready !== Math.min(this.#R, this.#sites.length) || primaries !== 1) {
        const lock = this.#server.namespace('sim').keys.get(this.#keys.primary(s));
        missing.push(
          `slot ${s}: ${ready} ready, ${primaries} primaries, lock ${lock?.value ?? 'free'} (session ${lock?.sessionId ?? '-'})`,
        );
      }
    }
    if (missing.length === 0) {
      for (let s = 0; s < this.#slots && missing.length < 2; s++) {
        const routes = this.#sites.map((n) => `${n.id}:${JSON.stringify(n.site?.route(s))}`);
        const r0 = this.#sites[0]?.site?.route(s);
        if (
          new Set(routes.map((r) => r.slice(r.indexOf(':') + 1))).size > 1 ||
          r0?.primary === undefined ||
          r0.secondaries.length !== Math.min(this.#R, this.#sites.length) - 1
        ) {
          const chunk = this.#server.namespace('sim').keys.get(this.#keys.planChunk(0));
          const holders = this.#sites.map((n) => `${n.id}=${n.site?.slots().get(s) ?? '-'}`).join(',');
          missing.push(
            `slot ${s} routes: ${routes.join(' ')}; holders ${holders}; plan ${chunk?.value.slice(0, 400) ?? '-'}`,
          );
        }
      }
    }
    return `not settled ${SLOTS_SIM.settleBoundMs} ms after the faults stopped: ${missing.join('; ')}; ${parts.join(' ')}`;
  }
}
