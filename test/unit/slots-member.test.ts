/**
 * The slots runtime (src/runtime/slots/) on the memory store with
 * virtual time: sites join, a fourth joins, one leaves gracefully, one is
 * "killed" (its client stops renewing); the application migrates with a
 * delay. A monitor checks, after every virtual 10 ms: at most one site acts
 * as primary of a slot, and once a slot had min(R, sites) ready replicas it
 * never has fewer during planned moves; and at the end that every site's
 * routing table is the same and matches the plan.
 */
import { describe, expect, it } from 'vitest';
import { MemoryServer } from '../../src/backends/memory/server.js';
import { MemoryStore } from '../../src/backends/memory/store.js';
import { VirtualClock } from '../../src/store/clock.js';
import { joinSlots, type SlotsMember } from '../../src/runtime/slots/member.js';
import type { Clock, Store, Txn } from '../../src/store/contract.js';
import { CorruptDataError } from '../../src/errors.js';
import { SlotKeys } from '../../src/protocol/slots/keys.js';
import { drive } from '../harness/virtual-time.js';

const SLOTS = 64;
const R = 2;

interface Harness {
  readonly clock: VirtualClock;
  readonly server: MemoryServer;
  readonly sites: Map<string, { site: SlotsMember; store: MemoryStore }>;
  readonly violations: string[];
  /** Per slot: the highest ready count reached while no crash happened. */
  planned: boolean;
}

/** The application: migrate each slot it is asked to prepare (takes migrateMs), release what it may. */
function application(h: Harness, id: string, site: SlotsMember, migrateMs: number): void {
  site.on('prepare', ({ slots }) => {
    for (const s of slots) {
      h.clock.setTimeout(() => {
        if (site.slots().get(s) === 'preparing') void site.markReady(s).catch(() => undefined);
      }, migrateMs);
    }
  });
  site.on('releasable', ({ slots }) => {
    for (const s of slots) {
      // A refusal is a result (routine); only a failure of the store rejects.
      void site.release(s).catch((e: unknown) => h.violations.push(`${id}: release(${s}) failed: ${String(e)}`));
    }
  });
}

async function addSite(
  h: Harness,
  id: string,
  migrateMs = 200,
  wrap: (s: MemoryStore) => Store = (s) => s,
  leaveTimeoutMs?: number,
): Promise<SlotsMember> {
  const memory = new MemoryStore({ server: h.server, clock: h.clock });
  const store = wrap(memory);
  // Subscribed as soon as the member exists (in the join promise's then, before virtual time moves on): events
  // are held until the caller has the member, so none is missed.
  const site = await drive(
    h.clock,
    joinSlots({
      store,
      cluster: 'kv',
      node: { id, zone: `z${id.charCodeAt(id.length - 1) % 2}`, address: `${id}:7000` },
      slotCount: SLOTS,
      replicas: R,
      sessionTtlMs: 2000,
      reconcileIntervalMs: 200,
      leaveTimeoutMs,
      clock: h.clock,
    }).then((site) => {
      application(h, id, site, migrateMs);
      return site;
    }),
  );
  h.sites.set(id, { site, store: memory });
  return site;
}

function monitor(h: Harness, reached: number[]): void {
  const live = [...h.sites.values()];
  for (let s = 0; s < SLOTS; s++) {
    const primaries = live.filter((x) => x.site.isPrimary(s)).map((x) => x.site.nodeId);
    if (primaries.length > 1) h.violations.push(`slot ${s}: primaries ${primaries.join(', ')}`);
    const ready = live.filter((x) => x.site.slots().get(s) === 'ready').length;
    if (h.planned && ready < (reached[s] ?? 0)) {
      h.violations.push(`slot ${s}: ${ready} ready replicas, had ${reached[s]}`);
    }
    const want = Math.min(R, live.length);
    reached[s] = Math.min(want, Math.max(reached[s] ?? 0, ready));
  }
}

async function runMonitored(h: Harness, ms: number, reached: number[]): Promise<void> {
  for (let t = 0; t < ms; t += 10) {
    await h.clock.runFor(10);
    monitor(h, reached);
  }
}

function converged(h: Harness): boolean {
  const sites = [...h.sites.values()].map((x) => x.site);
  // Every site has its share and nothing is in flight (right after a join the old layout also looks settled).
  for (const x of sites) {
    const states = [...x.slots().values()];
    if (states.length === 0 || states.some((st) => st !== 'ready')) return false;
  }
  for (let s = 0; s < SLOTS; s++) {
    const routes = sites.map((x) => x.route(s));
    const first = JSON.stringify(routes[0]);
    if (routes.some((r) => JSON.stringify(r) !== first)) return false;
    const r = routes[0]!;
    if (r.primary === undefined || r.secondaries.length !== Math.min(R, sites.length) - 1) return false;
    const holders = sites.filter((x) => x.slots().get(s) === 'ready').length;
    if (holders !== Math.min(R, sites.length)) return false;
  }
  return true;
}

async function untilConverged(h: Harness, reached: number[], maxMs = 20_000): Promise<void> {
  for (let t = 0; t < maxMs; t += 100) {
    await runMonitored(h, 100, reached);
    if (converged(h)) return;
  }
  throw new Error('slots did not converge');
}

describe('slots member runtime (memory store, virtual time)', () => {
  it('join, another join, graceful leave: one primary per slot, never below R ready, same routes everywhere', async () => {
    const clock = new VirtualClock(1_000);
    const h: Harness = { clock, server: new MemoryServer({ clock }), sites: new Map(), violations: [], planned: true };
    const reached: number[] = [];
    for (const id of ['a', 'b', 'c']) await addSite(h, id);
    await untilConverged(h, reached);
    const a = h.sites.get('a')!.site;
    expect(a.routeKey('user:42').slot).toBe(a.slotForKey('user:42'));
    // Every primary has an epoch; routing names it with its address.
    const r0 = a.route(0);
    expect(r0.primary?.address).toBe(`${r0.primary!.id}:7000`);
    const primarySite = h.sites.get(r0.primary!.id)!.site;
    expect(primarySite.epoch(0)).toBe(r0.primary!.epoch);

    const gained: number[] = [];
    const d = await addSite(h, 'd');
    d.on('primaryGained', ({ slots }) => gained.push(...slots.map((x) => x.slot)));
    await untilConverged(h, reached);
    expect(gained.length).toBeGreaterThan(0);
    expect([...d.slots().values()].every((st) => st === 'ready')).toBe(true);

    // Graceful leave: b keeps serving until its slots are ready elsewhere.
    const b = h.sites.get('b')!.site;
    let done = false;
    const left = b.leave().finally(() => (done = true));
    while (!done) await runMonitored(h, 10, reached); // b counts until it has left: it serves while leaving
    await left;
    expect(b.slots().size).toBe(0); // it released everything (nothing dropped at the deadline)
    h.sites.delete('b');
    await untilConverged(h, reached);
    expect(h.violations).toEqual([]);
    for (const x of h.sites.values()) await drive(clock, x.site.leave());
  }, 60_000);

  it('junk in a plan chunk: reported, never overwritten, sites keep serving; planning resumes once it is deleted', async () => {
    const clock = new VirtualClock(1_000);
    const h: Harness = { clock, server: new MemoryServer({ clock }), sites: new Map(), violations: [], planned: true };
    const reached: number[] = [];
    for (const id of ['a', 'b', 'c']) await addSite(h, id);
    await untilConverged(h, reached);
    const errors: CorruptDataError[] = [];
    for (const x of h.sites.values())
      x.site.on('error', ({ error }) => void (error instanceof CorruptDataError && errors.push(error)));
    const before = new Map([...h.sites].map(([id, x]) => [id, [...x.site.slots()]]));
    const chunk = new SlotKeys('kv').planChunk(0);
    const store = h.sites.get('a')!.store;
    const put = (value: string) => store.txn({ compare: [], then: [{ op: 'put', key: chunk, value }] });
    await drive(clock, put('{"v":1,"generation":"junk'));
    // A new site would make the coordinator re-plan (and, before, rewrite the chunk it could not read).
    await addSite(h, 'd');
    await runMonitored(h, 3_000, reached);
    expect((await drive(clock, store.get(chunk)))?.value).toBe('{"v":1,"generation":"junk');
    expect(errors.some((e) => e.key === chunk)).toBe(true);
    expect(errors.some((e) => e.key === chunk && /writes no plan/.test(e.message))).toBe(true);
    // Reported once while it stays unreadable, not once per round.
    expect(errors.filter((e) => e.key === chunk).length).toBeLessThanOrEqual(2 * h.sites.size);
    for (const [id, slots] of before) expect([...h.sites.get(id)!.site.slots()]).toEqual(slots);
    expect(h.sites.get('d')!.site.slots().size).toBe(0);
    await drive(clock, store.txn({ compare: [], then: [{ op: 'delete', key: chunk }] }));
    await untilConverged(h, reached);
    expect(h.sites.get('d')!.site.slots().size).toBeGreaterThan(0);
    expect(h.violations).toEqual([]);
    for (const x of h.sites.values()) await drive(clock, x.site.leave());
  }, 60_000);

  it('a slot whose release() failed is announced releasable again (regression: it stayed on the old site)', async () => {
    // Seen on real Redis: release() gave up on ready-bitmap contention, and the slot, still marked announced,
    // was never offered again, so the old replica kept it for good and the cluster never converged.
    const clock = new VirtualClock(1_000);
    const h: Harness = { clock, server: new MemoryServer({ clock }), sites: new Map(), violations: [], planned: true };
    const reached: number[] = [];
    let failures = 0;
    // Site a's store fails its first two guarded release transactions (they compare ready keys), as contention would.
    const flaky = (s: MemoryStore): Store =>
      new Proxy(s, {
        get(target, prop) {
          if (prop !== 'txn') {
            const v = Reflect.get(target, prop, target) as unknown; // private fields: the target is the receiver
            return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
          }
          return (req: Txn) => {
            const isRelease = req.compare.some((c) => c.key.includes('/ready/'));
            if (isRelease && failures < 2) {
              failures++;
              return Promise.reject(new Error('injected: release transaction failed'));
            }
            return target.txn(req);
          };
        },
      });
    await addSite(h, 'a', 200, flaky);
    await addSite(h, 'b');
    await untilConverged(h, reached);
    await addSite(h, 'c'); // a and b must each release about a third of their slots
    await untilConverged(h, reached);
    expect(failures).toBe(2);
    expect(h.violations.filter((v) => !v.includes('injected'))).toEqual([]);
    for (const x of h.sites.values()) await drive(clock, x.site.leave());
  }, 60_000);

  it('isPrimary() is false as soon as the lease deadline passed, before any timer ran (a resumed process)', async () => {
    // Seen on real Redis with a SIGSTOPped site: on SIGCONT the application's overdue timer ran before the fence
    // timer and isPrimary() still said true, so it wrote as primary after another site had taken the slot.
    const vc = new VirtualClock(1_000);
    let jumpMs = 0;
    // The site's and its store client's view of time: jumps ahead without firing timers, as after SIGCONT.
    const clock: Clock = {
      now: () => vc.now() + jumpMs,
      setTimeout: (fn, ms) => vc.setTimeout(fn, ms),
      clearTimeout: (t) => vc.clearTimeout(t),
    };
    const store = new MemoryStore({ server: new MemoryServer({ clock: vc }), clock });
    const site = await drive(
      vc,
      joinSlots({ store, cluster: 'kv', node: { id: 'a' }, slotCount: 8, replicas: 1, clock }).then((site) => {
        site.on('prepare', ({ slots }) => slots.forEach((s) => void site.markReady(s)));
        return site;
      }),
    );
    await vc.runFor(2_000);
    expect(site.isPrimary(0)).toBe(true);
    expect(site.epoch(0)).toBeGreaterThan(0);
    jumpMs = 10_000; // the process was stopped for the whole TTL; no timer has run since
    expect(site.isPrimary(0)).toBe(false);
    expect(site.epoch(0)).toBeUndefined();
    await drive(vc, site.leave());
  }, 60_000);

  it('decisions a round took before its awaits apply only to slots still in that state (regression)', async () => {
    // Seen on real Redis: a round decided to cancel a preparing slot, awaited the deletion of primary locks it
    // stepped down from, and meanwhile markReady(slot) went through; the round then dropped the now ready slot
    // from its local state without telling the application it had a ready copy, and the next bitmap write
    // cleared its ready bit without the release check. The same staleness announced `releasable` for slots
    // already released. Here lock deletions are slow, so rounds await long and the races happen.
    const clock = new VirtualClock(1_000);
    const h: Harness = { clock, server: new MemoryServer({ clock }), sites: new Map(), violations: [], planned: true };
    const reached: number[] = [];
    const slowLockDeletes = (s: MemoryStore): Store =>
      new Proxy(s, {
        get(target, prop) {
          if (prop !== 'txn') {
            const v = Reflect.get(target, prop, target) as unknown;
            return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
          }
          return async (req: Txn) => {
            const deletesLock = req.then.some((op) => op.op === 'delete' && op.key.includes('/primary/'));
            if (deletesLock) await new Promise<void>((r) => h.clock.setTimeout(() => r(), 150));
            return target.txn(req);
          };
        },
      });
    const readyDone = new Map<string, Set<number>>();
    const track = (site: SlotsMember): void => {
      const done = new Set<number>();
      readyDone.set(site.nodeId, done);
      const markReady = site.markReady.bind(site);
      site.markReady = async (slot: number) => {
        const r = await markReady(slot);
        done.add(slot);
        return r;
      };
      site.on('cancelled', ({ slots }) => {
        for (const s of slots) {
          if (site.slots().get(s) === undefined && done.has(s)) {
            h.violations.push(`${site.nodeId}: slot ${s} cancelled after it was marked ready`);
          }
        }
      });
      site.on('releasable', ({ slots }) => slots.forEach((s) => done.delete(s)));
    };
    for (const [id, ms] of [
      ['a', 140],
      ['b', 150],
      ['c', 160],
      ['d', 145],
    ] as const) {
      track(await addSite(h, id, ms, slowLockDeletes));
      await runMonitored(h, 300, reached);
    }
    await untilConverged(h, reached);
    expect(h.violations).toEqual([]);
    for (const x of h.sites.values()) await drive(clock, x.site.leave());
  }, 60_000);

  it('a graceful leave within a TTL of an undetected crash does not count the crashed node as a ready replica', async () => {
    const clock = new VirtualClock(1_000);
    const h: Harness = { clock, server: new MemoryServer({ clock }), sites: new Map(), violations: [], planned: true };
    const reached: number[] = [];
    for (const id of ['a', 'b', 'c']) await addSite(h, id);
    await untilConverged(h, reached);
    // The coordinator stays; of the two others, one crashes and the other leaves.
    const [coordinator, crashed, leaver] = [...h.sites.keys()].sort(
      (x, y) => Number(h.sites.get(y)!.site.isCoordinator) - Number(h.sites.get(x)!.site.isCoordinator),
    ) as [string, string, string];
    const a = h.sites.get(leaver)!.site;
    const counted: string[][] = [];
    a.on('released', ({ readyElsewhere }) => counted.push([...readyElsewhere]));
    // The crash: the process is gone, its session (and so its sites/ and ready/ keys) lives on for up to a TTL.
    h.sites.get(crashed)!.store.faults = { request: () => ({ fail: 'before' }) };
    h.sites.delete(crashed);
    const crashedAtMs = clock.now();
    // The leave starts at once: its slots move to the two others (the crashed one still counts as live).
    await drive(clock, a.leave());
    expect(counted.length).toBeGreaterThan(0);
    // No release counted the crashed node: it could not answer the probe. The leave waited for its session to end
    // instead (then the coordinator's node alone was enough).
    expect(counted.filter((c) => c.includes(crashed))).toEqual([]);
    expect(clock.now() - crashedAtMs).toBeGreaterThan(1000);
    expect(h.violations).toEqual([]);
    await drive(clock, h.sites.get(coordinator)!.site.leave());
  });

  it('a release that would drop below R is refused', async () => {
    const clock = new VirtualClock(1_000);
    const h: Harness = { clock, server: new MemoryServer({ clock }), sites: new Map(), violations: [], planned: true };
    const site = await addSite(h, 'a', 50);
    const reached: number[] = [];
    await runMonitored(h, 2_000, reached);
    const mine = [...site.slots().keys()];
    expect(mine.length).toBe(SLOTS); // alone: R clamps to 1, it holds everything
    // Alone, it is every slot's primary: the release is refused (a result, not an error) and nothing changes.
    expect(await drive(clock, site.release(mine[0]!))).toMatchObject({ released: false, reason: 'primary' });
    expect(site.slots().get(mine[0]!)).toBe('ready');
    await drive(clock, site.leave());
  }, 60_000);

  it('refuses a site whose cluster settings differ from the cluster', async () => {
    const clock = new VirtualClock(1_000);
    const server = new MemoryServer({ clock });
    const h: Harness = { clock, server, sites: new Map(), violations: [], planned: true };
    const a = await addSite(h, 'a');
    const store = new MemoryStore({ server, clock });
    await expect(
      drive(clock, joinSlots({ store, cluster: 'kv', node: { id: 'x' }, slotCount: 128, replicas: R, clock })),
    ).rejects.toThrow(/created with slotCount 64/);
    await drive(clock, a.leave());
  }, 60_000);

  it('reportFailed: the primary gives up the slot at once, a ready secondary takes over, the slot is prepared again', async () => {
    const clock = new VirtualClock(1_000);
    const h: Harness = { clock, server: new MemoryServer({ clock }), sites: new Map(), violations: [], planned: false };
    const reached: number[] = [];
    for (const id of ['a', 'b', 'c']) await addSite(h, id);
    await untilConverged(h, reached);
    const primaryId = h.sites.get('a')!.site.route(5).primary!.id;
    expect(h.sites.get('b')!.site.primary(5)).toEqual(h.sites.get('a')!.site.route(5).primary);
    const primary = h.sites.get(primaryId)!.site;
    const oldEpoch = primary.epoch(5)!;
    const lost: string[] = [];
    primary.on('primaryLost', ({ slots, reason }) => lost.push(`${slots.join(',')}:${reason}`));
    const prepared: number[] = [];
    primary.on('prepare', ({ slots }) => prepared.push(...slots));
    await drive(clock, primary.reportFailed(5));
    expect(primary.isPrimary(5)).toBe(false);
    expect(lost).toEqual(['5:failed']);
    await untilConverged(h, reached);
    const now = h.sites.get('a')!.site.route(5).primary!;
    expect(now.epoch).toBeGreaterThan(oldEpoch);
    // The failed copy was dropped and migrated in again (it is still one of the slot's replicas).
    expect(prepared).toContain(5);
    expect(h.violations).toEqual([]);
    for (const x of h.sites.values()) await drive(clock, x.site.leave());
  }, 60_000);

  it('leave() that cannot hand over in time ends its primary roles with primaryLost(leaving) and drops its slots', async () => {
    const clock = new VirtualClock(1_000);
    const h: Harness = { clock, server: new MemoryServer({ clock }), sites: new Map(), violations: [], planned: false };
    const reached: number[] = [];
    const a = await addSite(h, 'a', 50, undefined, 3_000);
    await runMonitored(h, 2_000, reached);
    expect(a.slots().size).toBe(SLOTS);
    // b's application never finishes a migration: nothing a holds can be released.
    await addSite(h, 'b', 1e9);
    await runMonitored(h, 1_000, reached);
    const lost: string[] = [];
    const dropped: number[] = [];
    a.on('primaryLost', ({ slots, reason }) => lost.push(`${slots.length}:${reason}`));
    a.on('slotsDropped', ({ slots, reason }) => reason === 'leaving' && dropped.push(...slots));
    const t0 = clock.now();
    await drive(clock, a.leave());
    expect(clock.now() - t0).toBeGreaterThanOrEqual(3_000);
    expect(lost).toEqual([`${SLOTS}:leaving`]);
    expect(dropped.length).toBe(SLOTS);
    for (let s = 0; s < SLOTS; s++) expect(a.isPrimary(s)).toBe(false);
    await drive(clock, h.sites.get('b')!.site.leave());
  }, 60_000);

  it('when the whole cluster leaves there is nowhere to drain to: leave() returns without waiting for its timeout', async () => {
    const clock = new VirtualClock(1_000);
    const h: Harness = { clock, server: new MemoryServer({ clock }), sites: new Map(), violations: [], planned: false };
    const reached: number[] = [];
    for (const id of ['a', 'b']) await addSite(h, id);
    await untilConverged(h, reached);
    const lost: string[] = [];
    for (const { site } of h.sites.values()) {
      site.on('primaryLost', ({ reason }) => lost.push(`${site.nodeId}:${reason}`));
    }
    const t0 = clock.now();
    await drive(clock, Promise.all([...h.sites.values()].map((x) => x.site.leave())));
    // leaveTimeoutMs is 60 s by default; a couple of rounds is all it takes to see that no site is left.
    expect(clock.now() - t0).toBeLessThan(2_000);
    expect(lost.sort()).toEqual(['a:leaving', 'b:leaving']);
  }, 60_000);
});
