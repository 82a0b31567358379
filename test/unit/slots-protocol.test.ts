/**
 * The slots protocol's pure cores (src/protocol/slots/): codecs, the
 * coordinator's plan, a site's decisions — and a model run of both under
 * random joins, graceful leaves, crashes and slow migrations, where the store
 * is one in-memory state and every store write is atomic. It checks the
 * handshake's rules before the runtime and the simulator add IO and time:
 * no release below min(R, sites), at most one primary per slot, and
 * convergence to the target placement once nothing changes.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CorruptDataError } from '../../src/errors.js';
import { decideSlotsPlan, type SlotsCoordinatorMemory } from '../../src/protocol/slots/coordinator.js';
import {
  decodePlanChunk,
  decodeReady,
  emptyReady,
  encodePlanChunk,
  encodeReady,
  hasReady,
  setReady,
  SlotKeys,
  type ReadyBits,
  type SlotAssignment,
  type SlotsConfig,
} from '../../src/protocol/slots/keys.js';
import { checkRelease, decideSite, type LocalSlotState, type SiteView } from '../../src/protocol/slots/site.js';

describe('slots keys and codecs', () => {
  it('round-trips plan chunks and ready bitmaps, and reports corrupt ones', () => {
    const slots: SlotAssignment[] = [
      { assigned: ['a', 'b'], primary: 'a' },
      { assigned: ['c', 'a', 'b'], primary: 'b' },
      { assigned: [], primary: undefined },
    ];
    expect(decodePlanChunk('k', encodePlanChunk(7, slots), 3)).toEqual({ generation: 7, slots });
    expect(() => decodePlanChunk('k', encodePlanChunk(7, slots), 4)).toThrow(CorruptDataError);
    expect(() => decodePlanChunk('k', '{"v":1,"generation":1,"sites":[],"a":[[3]],"p":[-1]}', 1)).toThrow(
      /out of range/,
    );
    const bits = emptyReady(100);
    setReady(bits, 0, true);
    setReady(bits, 99, true);
    setReady(bits, 50, true);
    setReady(bits, 50, false);
    const back = decodeReady('r', encodeReady(bits), 100);
    expect([0, 50, 99].map((s) => hasReady(back, s))).toEqual([true, false, true]);
    expect(() => decodeReady('r', encodeReady(bits), 200)).toThrow(CorruptDataError);
    const keys = new SlotKeys('kv');
    expect(keys.slotOfPrimaryKey(keys.primary(16383))).toBe(16383);
    expect(keys.chunkOfPlanKey(keys.planChunk(15))).toBe(15);
  });
});

// ---------------------------------------------------------------- the model

interface Site {
  readonly id: string;
  readonly local: Map<number, LocalSlotState>;
  readonly primaries: Map<number, number>;
  readonly failed: Set<number>;
  leaving: boolean;
}

class Model {
  readonly config: SlotsConfig;
  readonly sites = new Map<string, Site>();
  plan: (SlotAssignment | undefined)[];
  readonly locks: ({ site: string; epoch: number } | undefined)[];
  memory: SlotsCoordinatorMemory = {};
  epoch = 0;
  nextSite = 0;
  readonly violations: string[] = [];

  constructor(config: SlotsConfig) {
    this.config = config;
    this.plan = new Array<SlotAssignment | undefined>(config.slotCount).fill(undefined);
    this.locks = new Array<{ site: string; epoch: number } | undefined>(config.slotCount).fill(undefined);
  }

  candidates(): Map<string, { id: string; zone: string; weight: number }> {
    const m = new Map<string, { id: string; zone: string; weight: number }>();
    for (const s of this.sites.values())
      if (!s.leaving) m.set(s.id, { id: s.id, zone: `z${s.id.length % 2}`, weight: 1 });
    return m;
  }

  ready(): Map<string, ReadyBits> {
    const m = new Map<string, ReadyBits>();
    for (const s of this.sites.values()) {
      const bits = emptyReady(this.config.slotCount);
      for (const [slot, st] of s.local) if (st === 'ready') setReady(bits, slot, true);
      m.set(s.id, bits);
    }
    return m;
  }

  readyCount(slot: number): number {
    let n = 0;
    for (const s of this.sites.values()) if (s.local.get(slot) === 'ready') n++;
    return n;
  }

  view(site: Site): SiteView {
    return {
      siteId: site.id,
      slotCount: this.config.slotCount,
      replicas: this.config.replicas,
      liveSites: new Set(this.candidates().keys()),
      plan: this.plan,
      ready: this.ready(),
      primaryHolders: this.locks.map((l) => l?.site),
      local: site.local,
      myPrimaries: site.primaries,
      failed: site.failed,
      fenced: false,
    };
  }

  join(): void {
    const id = `s${this.nextSite++}`;
    this.sites.set(id, { id, local: new Map(), primaries: new Map(), failed: new Set(), leaving: false });
  }

  coordinate(): void {
    const d = decideSlotsPlan(
      this.config,
      { sites: this.candidates(), plan: this.plan, ready: this.ready(), primaries: this.locks.map((l) => l?.site) },
      this.memory,
    );
    if (d !== undefined) {
      this.plan = [...d.plan];
      this.memory = { target: d.target };
    }
  }

  /** One site acts on its decision; `pick` chooses which slots (all when it returns true always). */
  act(site: Site, pick: (slot: number) => boolean): void {
    const d = decideSite(this.view(site));
    for (const s of d.stepDown) {
      if (!pick(s)) continue;
      const lock = this.locks[s];
      if (lock?.site === site.id && lock.epoch === site.primaries.get(s)) this.locks[s] = undefined;
      site.primaries.delete(s);
    }
    for (const s of d.prepare) if (pick(s)) site.local.set(s, 'preparing');
    for (const s of d.cancel) if (pick(s)) site.local.delete(s);
    for (const s of d.takeOver) {
      if (!pick(s) || this.locks[s] !== undefined) continue; // compare-exists-false
      const epoch = ++this.epoch;
      this.locks[s] = { site: site.id, epoch };
      site.primaries.set(s, epoch);
      for (const other of this.sites.values()) {
        if (other !== site && other.primaries.has(s)) this.violations.push(`slot ${s}: two primaries`);
      }
    }
    for (const s of d.releasable) if (pick(s)) this.release(site, s);
    this.closeIfDone(site);
  }

  /** The application's release(slot): re-checked against the store as it is now (one guarded transaction). */
  release(site: Site, slot: number): void {
    if (site.local.get(slot) !== 'ready' || site.primaries.has(slot)) return;
    if (!checkRelease(this.view(site), slot).allowed) return;
    // After the release: min(R, sites that may hold slots) ready replicas, the releasing site counted while it stays.
    const needed = Math.min(this.config.replicas, this.candidates().size);
    site.local.delete(slot);
    site.failed.delete(slot);
    if (this.readyCount(slot) < needed) {
      this.violations.push(`slot ${slot}: ${site.id} released, leaving ${this.readyCount(slot)} ready < ${needed}`);
    }
  }

  markReady(site: Site, slot: number): void {
    if (site.local.get(slot) === 'preparing') site.local.set(slot, 'ready');
  }

  leave(site: Site): void {
    site.leaving = true;
    this.closeIfDone(site);
  }

  /** A leaving site closes its session once it holds nothing. */
  closeIfDone(site: Site): void {
    if (site.leaving && site.local.size === 0 && site.primaries.size === 0) this.sites.delete(site.id);
  }

  /** kill -9: the session expires, its keys vanish (its ready bits and its locks). */
  crash(site: Site): void {
    this.sites.delete(site.id);
    for (let s = 0; s < this.locks.length; s++) if (this.locks[s]?.site === site.id) this.locks[s] = undefined;
  }

  /** Run every step to completion, migrations finishing at once, until nothing changes. */
  settle(): void {
    for (let round = 0; round < 50; round++) {
      const before = JSON.stringify([this.plan, this.locks, [...this.sites.values()].map((s) => [...s.local])]);
      this.coordinate();
      for (const site of [...this.sites.values()]) {
        this.act(site, () => true);
        for (const [slot, st] of site.local) if (st === 'preparing') this.markReady(site, slot);
        this.act(site, () => true);
      }
      const after = JSON.stringify([this.plan, this.locks, [...this.sites.values()].map((s) => [...s.local])]);
      if (before === after) return;
    }
    throw new Error('the model did not settle in 50 rounds');
  }

  /** Settled: every slot on exactly its target replicas, all ready, primary lock on the target primary. */
  checkConverged(): void {
    const t = this.memory.target;
    if (t === undefined) return;
    const R = t.replicas;
    for (let s = 0; s < this.config.slotCount; s++) {
      const want = Array.from({ length: R }, (_, r) => t.siteIds[t.table[s * R + r]!]!);
      const holders = [...this.sites.values()].filter((x) => x.local.get(s) === 'ready').map((x) => x.id);
      expect(holders.sort()).toEqual([...want].sort());
      expect(this.locks[s]?.site).toBe(want[0]);
      expect(this.plan[s]).toEqual({ assigned: want, primary: want[0] });
    }
  }
}

describe('slots protocol cores (model run)', () => {
  it('a fresh cluster: every slot prepared on its target replicas, primaries taken once ready', () => {
    const m = new Model({ slotCount: 32, replicas: 2, minSites: 3 });
    m.join();
    m.join();
    m.coordinate();
    expect(m.plan.every((p) => p === undefined)).toBe(true); // below minSites: nothing planned
    m.join();
    m.settle();
    m.checkConverged();
    expect(m.violations).toEqual([]);
  });

  it('a join: old replicas keep serving and the old primary stays until the new replicas are ready', () => {
    const m = new Model({ slotCount: 64, replicas: 2, minSites: 1 });
    for (let i = 0; i < 3; i++) m.join();
    m.settle();
    const before = m.locks.map((l) => l?.site);
    m.join();
    m.coordinate();
    // The new site is assigned slots but has not prepared them: nothing moved yet, no primary changed.
    const newcomer = m.sites.get('s3')!;
    for (const site of m.sites.values()) m.act(site, () => true);
    expect([...newcomer.local.values()].every((st) => st === 'preparing')).toBe(true);
    expect(newcomer.local.size).toBeGreaterThan(0);
    expect(m.locks.map((l) => l?.site)).toEqual(before);
    for (const s of newcomer.local.keys()) {
      expect(m.plan[s]!.assigned.length).toBe(3); // 2 target replicas + the old one kept
      expect(m.readyCount(s)).toBe(2);
    }
    m.settle();
    m.checkConverged();
    expect(m.violations).toEqual([]);
  });

  it('a site counts only assigned ready replicas elsewhere, and a failed slot may go at once', () => {
    const m = new Model({ slotCount: 1, replicas: 2, minSites: 1 });
    for (let i = 0; i < 3; i++) m.join();
    const [a, b, c] = [...m.sites.values()];
    a!.local.set(0, 'ready');
    b!.local.set(0, 'ready');
    c!.local.set(0, 'ready');
    m.plan = [{ assigned: ['s2'], primary: 's2' }];
    // a sees b ready, but b is not assigned: only c counts; min(2, 2 others) = 2 needed.
    expect(checkRelease(m.view(a!), 0).allowed).toBe(false);
    m.plan = [{ assigned: ['s1', 's2'], primary: 's2' }];
    expect(checkRelease(m.view(a!), 0).allowed).toBe(true);
    m.plan = [{ assigned: ['s2'], primary: 's2' }];
    a!.failed.add(0);
    expect(checkRelease(m.view(a!), 0).allowed).toBe(true);
  });

  it('random joins, leaves, crashes and slow migrations: no release below R, one primary, convergence', () => {
    const action = fc.record({
      kind: fc.integer({ min: 0, max: 99 }),
      site: fc.nat(),
      slot: fc.nat(),
      coin: fc.boolean(),
    });
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3 }),
        fc.array(action, { minLength: 10, maxLength: 120 }),
        (replicas, actions) => {
          const m = new Model({ slotCount: 12, replicas, minSites: 1 });
          for (let i = 0; i < 3; i++) m.join();
          for (const a of actions) {
            const list = [...m.sites.values()];
            const site = list[a.site % Math.max(1, list.length)];
            if (a.kind < 25) m.coordinate();
            else if (a.kind < 60 && site !== undefined) m.act(site, (s) => (s + a.slot) % 3 !== 0 || a.coin);
            else if (a.kind < 80 && site !== undefined) {
              const preparing = [...site.local].filter(([, st]) => st === 'preparing');
              const pick = preparing[a.slot % Math.max(1, preparing.length)];
              if (pick !== undefined) m.markReady(site, pick[0]);
            } else if (a.kind < 88 && m.sites.size < 6) m.join();
            else if (a.kind < 95 && site !== undefined && m.candidates().size > 1) m.leave(site);
            else if (site !== undefined && m.sites.size > 1) m.crash(site);
          }
          m.settle();
          if (m.candidates().size > 0) m.checkConverged();
          expect(m.violations).toEqual([]);
        },
      ),
      { numRuns: 300, seed: 42 },
    );
  });
});
