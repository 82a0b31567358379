/**
 * `npm run bench -- slots [--json] [--quick] [--sections compute,route,balance,movement,convergence]
 *   [--convergence-slots 256,16384]` (default 1024 and 16384; `--quick`: 1024)
 *
 * The pure parts of slots, each figure as a ratio within this run or to a stated target:
 * 1. placement compute at 16384 slots × 200 sites × R=3 (median wall and CPU time), against the 20 ms target, the
 *    Go "slots" library's published 2.1 s, and a straightforward implementation measured here (score every site,
 *    sort, zone-spread greedy: `rankNodes` per slot, primary = top-ranked);
 * 2. route lookup `table.route(table.slotForKey(key))` in ns/op against the 200 ns target (no store calls: the
 *    table is in memory);
 * 3. balance: max/mean replicas and primaries per site;
 * 4. movement on a join and a leave: (slot, site) replicas gained and primaries changed against the ideal;
 * 5. convergence on a private Redis (the runtime, not just the placement): 5 SlotsMember instances in this process,
 *    each with its own store client, R = 3, an application that marks a slot ready at once; the time from a site's
 *    join (and from a graceful leave) until every site's routing table is the same and every slot has R ready
 *    replicas and a primary, against the store's round trip and the session TTL; with the store calls made.
 *
 * Pure CPU: on a shared machine wall times vary with load, so each figure is a median of several runs and the CPU
 * time of the process is shown beside the wall time.
 */
import { rankNodes } from '../src/placement/index.js';
import { RoutingTable } from '../src/placement/routing.js';
import type { PlacementNode } from '../src/placement/index.js';
import { slotForKey } from '../src/placement/slot-hash.js';
import {
  computeSlotPlacement,
  planTransition,
  siteLoads,
  slotReplicas,
  type SlotPlacement,
} from '../src/placement/slots.js';
import { createHash } from 'node:crypto';
import { joinSlots, type SlotsMember as RuntimeSite } from '../src/runtime/slots/member.js';
import type { Store } from '../src/store/contract.js';
import { openStore } from '../src/store/open.js';
import { startRedis } from '../test/harness/servers.js';
import { round, table } from './stats.js';

const SLOTS = 16384;
const R = 3;
const TARGET_COMPUTE_MS = 20;
const GO_COMPUTE_MS = 2100;
const TARGET_LOOKUP_NS = 200;

function log(msg: string): void {
  process.stderr.write(`slots bench: ${msg}\n`);
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function sites(n: number, zones: number, weighted = false, prefix = 'site'): PlacementNode[] {
  return Array.from({ length: n }, (_, i) => ({
    id: `${prefix}-${String(i).padStart(4, '0')}`,
    ...(zones > 0 ? { zone: `zone-${i % zones}` } : {}),
    ...(weighted ? { weight: 1 + (i % 3) } : {}),
  }));
}

/** Median wall and CPU milliseconds of `runs` calls after one warm-up. */
function time(fn: () => unknown, runs: number): { wallMs: number; cpuMs: number } {
  fn();
  const wall: number[] = [];
  const cpu: number[] = [];
  for (let i = 0; i < runs; i++) {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    fn();
    wall.push(performance.now() - t0);
    const c = process.cpuUsage(c0);
    cpu.push((c.user + c.system) / 1000);
  }
  return { wallMs: round(median(wall), 2), cpuMs: round(median(cpu), 2) };
}

// ---- 1. compute ------------------------------------------------------------------------------

interface ComputeCase {
  name: string;
  slots: number;
  sites: number;
  replicas: number;
  wallMs: number;
  cpuMs: number;
  ratioToTarget: number;
  ratioToGo: number;
}

/** The straightforward way, for a ratio measured in this run: score and sort all sites per slot. */
function naivePlacement(ss: readonly PlacementNode[], slotCount: number, replicas: number): string[][] {
  const out: string[][] = [];
  for (let s = 0; s < slotCount; s++) {
    out.push(rankNodes(String(s), ss, replicas, { spreadZones: true }).map((n) => n.id));
  }
  return out;
}

function computeCases(quick: boolean): { cases: ComputeCase[]; naiveMs: number; naiveRatio: number } {
  const runs = quick ? 7 : 15;
  const defs: [string, PlacementNode[]][] = [
    ['equal weights, no zones', sites(200, 0)],
    ['equal weights, 3 zones', sites(200, 3)],
    ['weights 1–3, 3 zones', sites(200, 3, true)],
  ];
  const cases = defs.map(([name, ss]): ComputeCase => {
    const t = time(() => computeSlotPlacement({ sites: ss, slotCount: SLOTS, replicas: R }), runs);
    return {
      name,
      slots: SLOTS,
      sites: ss.length,
      replicas: R,
      ...t,
      ratioToTarget: round(t.wallMs / TARGET_COMPUTE_MS, 2),
      ratioToGo: round(t.wallMs / GO_COMPUTE_MS, 4),
    };
  });
  const naive = time(() => naivePlacement(defs[1]![1], SLOTS, R), quick ? 1 : 3);
  // The fast placement must pick the same replica sets as the straightforward one.
  const fast = computeSlotPlacement({ sites: defs[1]![1], slotCount: SLOTS, replicas: R });
  const slow = naivePlacement(defs[1]![1], SLOTS, R);
  for (let s = 0; s < SLOTS; s++) {
    const a = slotReplicas(fast, s).sort().join();
    if (a !== [...slow[s]!].sort().join()) throw new Error(`slot ${s}: replica sets differ from rankNodes`);
  }
  return {
    cases,
    naiveMs: naive.wallMs,
    naiveRatio: round(cases[1]!.wallMs / naive.wallMs, 4),
  };
}

// ---- 2. route lookup -------------------------------------------------------------------------

interface LookupResult {
  keys: number;
  lookups: number;
  buildMs: number;
  routeKeyNs: number;
  slotForKeyNs: number;
  routeSlotNs: number;
  ratioToTarget: number;
  heapDeltaBytesPerLookup: number;
  storeCalls: 0;
}

function lookups(quick: boolean): LookupResult {
  const ss = sites(200, 3);
  const placement = computeSlotPlacement({ sites: ss, slotCount: SLOTS, replicas: R });
  const addresses = new Map(ss.map((s, i) => [s.id, `10.0.${i >> 8}.${i & 255}:7000`]));
  // The same class a slots member serves as its live table (here built from a placement, as a client would).
  const build = time(() => RoutingTable.fromPlacement(placement, addresses, 1), quick ? 5 : 9);
  const rt = RoutingTable.fromPlacement(placement, addresses, 1);
  // Realistic keys: ASCII ids, some with a hash tag; built before timing.
  const keys = Array.from({ length: 65536 }, (_, i) => (i % 4 === 0 ? `{user:${i >> 2}}:cart` : `user:${i}:profile`));
  const slots = Int32Array.from(keys, (k) => slotForKey(k, SLOTS));
  const n = quick ? 2_000_000 : 5_000_000;
  const rounds = quick ? 5 : 9;
  let sink = 0;
  const measure = (body: (i: number) => number): number => {
    const per: number[] = [];
    for (let r = 0; r <= rounds; r++) {
      const t0 = performance.now();
      // `| 0` keeps the sum a small integer: a growing double would be boxed on every add (an allocation).
      for (let i = 0; i < n; i++) sink = (sink + body(i & 65535)) | 0;
      if (r > 0) per.push(((performance.now() - t0) * 1e6) / n); // round 0 warms up
    }
    return round(median(per), 1);
  };
  const routeKeyNs = measure((i) => rt.route(rt.slotForKey(keys[i]!)).primary!.epoch);
  const slotForKeyNs = measure((i) => rt.slotForKey(keys[i]!));
  const routeSlotNs = measure((i) => rt.route(slots[i]!).primary!.epoch);
  // Allocation check: heap growth over a burst of lookups (GC may run in between, so this is a bound, not exact).
  const heap0 = process.memoryUsage().heapUsed;
  for (let i = 0; i < 1_000_000; i++) sink = (sink + rt.route(rt.slotForKey(keys[i & 65535]!)).slot) | 0;
  const heapDelta = Math.max(0, process.memoryUsage().heapUsed - heap0);
  if (sink === -1) log('unreachable'); // keeps `sink` alive
  return {
    keys: keys.length,
    lookups: n,
    buildMs: build.wallMs,
    routeKeyNs,
    slotForKeyNs,
    routeSlotNs,
    ratioToTarget: round(routeKeyNs / TARGET_LOOKUP_NS, 3),
    heapDeltaBytesPerLookup: round(heapDelta / 1_000_000, 3),
    storeCalls: 0,
  };
}

// ---- 3. balance ------------------------------------------------------------------------------

interface BalanceCase {
  name: string;
  replicasMaxOverMean: number;
  replicasMinOverMean: number;
  primariesMaxOverMean: number;
  primariesMinOverMean: number;
  /** The top-ranked replica as primary (what the balancing pass replaces), for comparison. */
  topRankedPrimariesMaxOverMean: number;
}

function spread(xs: readonly number[]): { max: number; min: number } {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  return { max: round(Math.max(...xs) / mean, 3), min: round(Math.min(...xs) / mean, 3) };
}

function balance(): BalanceCase[] {
  const defs: [string, PlacementNode[]][] = [
    ['16384 × 20, R=3, no zones', sites(20, 0)],
    ['16384 × 20, R=3, 4 zones', sites(20, 4)],
    ['16384 × 200, R=3, no zones', sites(200, 0)],
    ['16384 × 200, R=3, 3 zones', sites(200, 3)],
  ];
  return defs.map(([name, ss]) => {
    const p = computeSlotPlacement({ sites: ss, slotCount: SLOTS, replicas: R });
    const loads = siteLoads(p);
    const reps = spread(loads.map((l) => l.replicas));
    const prims = spread(loads.map((l) => l.primaries));
    // Top-ranked replica as primary: rank 0 of the zone-spread order.
    const top = new Map<string, number>(p.siteIds.map((id) => [id, 0]));
    for (let s = 0; s < SLOTS; s++) {
      const first = rankNodes(String(s), ss, 1)[0]!.id;
      top.set(first, top.get(first)! + 1);
    }
    return {
      name,
      replicasMaxOverMean: reps.max,
      replicasMinOverMean: reps.min,
      primariesMaxOverMean: prims.max,
      primariesMinOverMean: prims.min,
      topRankedPrimariesMaxOverMean: spread([...top.values()]).max,
    };
  });
}

// ---- 4. movement -----------------------------------------------------------------------------

interface MovementCase {
  name: string;
  gained: number;
  idealGained: number;
  gainedRatio: number;
  primaryChanges: number;
  idealPrimaryChanges: number;
  primaryRatio: number;
  /** Primary changes when the new placement is computed without `previous`. */
  primaryChangesWithoutPrevious: number;
}

function movement(): MovementCase[] {
  const out: MovementCase[] = [];
  for (const n of [20, 200]) {
    const base = sites(n, 3);
    const before = computeSlotPlacement({ sites: base, slotCount: SLOTS, replicas: R });
    const cases: [string, PlacementNode[], number][] = [
      [`join ${n} → ${n + 1}`, [...base, { id: 'site-new', zone: 'zone-0' }], n + 1],
      [`leave ${n} → ${n - 1}`, base.slice(1), n],
    ];
    for (const [name, after, divisor] of cases) {
      const next = computeSlotPlacement({ sites: after, slotCount: SLOTS, replicas: R, previous: before });
      const fresh: SlotPlacement = computeSlotPlacement({ sites: after, slotCount: SLOTS, replicas: R });
      const plan = planTransition(before, next);
      const idealGained = (SLOTS * R) / divisor;
      const idealPrimary = SLOTS / divisor;
      out.push({
        name,
        gained: plan.gained,
        idealGained: round(idealGained, 1),
        gainedRatio: round(plan.gained / idealGained, 3),
        primaryChanges: plan.primaryChanges,
        idealPrimaryChanges: round(idealPrimary, 1),
        primaryRatio: round(plan.primaryChanges / idealPrimary, 3),
        primaryChangesWithoutPrevious: planTransition(before, fresh).primaryChanges,
      });
    }
  }
  return out;
}

// ---- 5. convergence (runtime, private Redis) -----------------------------------------------

interface ConvergenceCase {
  slots: number;
  sites: number;
  replicas: number;
  ttlMs: number;
  rttMs: number;
  /** Start of all sites together until settled (informational). */
  startMs: number | undefined;
  joinMs: number | undefined;
  leaveMs: number | undefined;
  joinRatioToRtt: number | undefined;
  joinRatioToTtl: number | undefined;
  leaveRatioToRtt: number | undefined;
  leaveRatioToTtl: number | undefined;
  joinStoreCalls: number | undefined;
  leaveStoreCalls: number | undefined;
  /** Why a phase did not settle within its bound, with how far it got. */
  note: string | undefined;
}

/** Counts the calls each site's store client makes (txn, get, range): the round trips the protocol costs. */
function counted(store: Store, counter: { calls: number }): Store {
  return new Proxy(store, {
    get(target, prop) {
      const v = Reflect.get(target, prop, target) as unknown;
      if (typeof v !== 'function') return v;
      const f = (v as (...a: unknown[]) => unknown).bind(target);
      if (prop !== 'txn' && prop !== 'get' && prop !== 'range') return f;
      return (...a: unknown[]) => {
        counter.calls++;
        return f(...a);
      };
    },
  });
}

/** Settled: same routing table everywhere, every slot with a primary and R ready replicas, nothing preparing. */
function settledness(
  sites: readonly RuntimeSite[],
  slotCount: number,
  replicas: number,
): { ok: boolean; slotsOk: number } {
  const want = Math.min(replicas, sites.length);
  const digests = new Set<string>();
  let slotsOk = 0;
  const states = sites.map((x) => x.slots());
  let preparing = false;
  for (const st of states) for (const v of st.values()) if (v !== 'ready') preparing = true;
  for (const site of sites) {
    const h = createHash('sha1');
    for (let s = 0; s < slotCount; s++) {
      const r = site.route(s);
      h.update(`${r.primary?.id ?? '-'}@${r.primary?.epoch ?? 0}:${r.secondaries.map((x) => x.id).join(',')};`);
    }
    digests.add(h.digest('hex'));
  }
  const first = sites[0]!;
  for (let s = 0; s < slotCount; s++) {
    const r = first.route(s);
    const holders = states.filter((st) => st.get(s) === 'ready').length;
    if (r.primary !== undefined && r.secondaries.length === want - 1 && holders === want) slotsOk++;
  }
  return { ok: !preparing && digests.size === 1 && slotsOk === slotCount, slotsOk };
}

async function convergence(slotCounts: readonly number[]): Promise<ConvergenceCase[]> {
  const server = await startRedis();
  const out: ConvergenceCase[] = [];
  const SITES = 5;
  const TTL_MS = 5000;
  const BOUND_MS = 180_000;
  try {
    const probe = await openStore(server.url, { namespace: 'bench-rtt' });
    for (let i = 0; i < 20; i++) await probe.get('x');
    const rtts: number[] = [];
    for (let i = 0; i < 200; i++) {
      const t0 = performance.now();
      await probe.get('x');
      rtts.push(performance.now() - t0);
    }
    await probe.close();
    const rttMs = round(median(rtts), 3);

    for (const slotCount of slotCounts) {
      log(`convergence: ${slotCount} slots × ${SITES} sites × R=${R}…`);
      const namespace = `bench-conv-${slotCount}-${Date.now().toString(36)}`;
      const counter = { calls: 0 };
      const sites: RuntimeSite[] = [];
      const stores: Store[] = [];
      const c: ConvergenceCase = {
        slots: slotCount,
        sites: SITES,
        replicas: R,
        ttlMs: TTL_MS,
        rttMs,
        startMs: undefined,
        joinMs: undefined,
        leaveMs: undefined,
        joinRatioToRtt: undefined,
        joinRatioToTtl: undefined,
        leaveRatioToRtt: undefined,
        leaveRatioToTtl: undefined,
        joinStoreCalls: undefined,
        leaveStoreCalls: undefined,
        note: undefined,
      };
      out.push(c);
      const add = async (i: number): Promise<RuntimeSite> => {
        const store = counted(await openStore(server.url, { namespace }), counter);
        stores.push(store);
        const site = await joinSlots({
          store,
          cluster: 'bench',
          node: { id: `site-${i}`, zone: `zone-${i % 3}` },
          slotCount,
          replicas: R,
          sessionTtlMs: TTL_MS,
        });
        // The application migrates nothing: ready at once, released at once. What is left is the protocol.
        site.on('prepare', ({ slots }) => slots.forEach((s) => void site.markReady(s).catch(() => undefined)));
        site.on('releasable', ({ slots }) => slots.forEach((s) => void site.release(s).catch(() => undefined)));
        sites.push(site);
        return site;
      };
      const waitSettled = async (phase: string, t0: number): Promise<number | undefined> => {
        let last = 0;
        while (performance.now() - t0 < BOUND_MS) {
          const st = settledness(sites, slotCount, R);
          if (st.ok) return round(performance.now() - t0, 1);
          last = st.slotsOk;
          await new Promise((r) => setTimeout(r, 50));
        }
        c.note =
          `${phase}: not settled within ${BOUND_MS / 1000} s (${last} of ${slotCount} slots with R ready replicas ` +
          `and a primary, the same on every site)`;
        return undefined;
      };
      try {
        let t0 = performance.now();
        for (let i = 0; i < SITES - 1; i++) await add(i);
        c.startMs = await waitSettled(`start of ${SITES - 1} sites`, t0);
        if (c.startMs === undefined) continue;

        counter.calls = 0;
        t0 = performance.now();
        await add(SITES - 1);
        c.joinMs = await waitSettled('join', t0);
        c.joinStoreCalls = counter.calls;
        if (c.joinMs === undefined) continue;

        counter.calls = 0;
        const leaving = sites.shift()!;
        t0 = performance.now();
        const left = leaving.leave();
        c.leaveMs = await waitSettled('graceful leave', t0);
        await left;
        c.leaveStoreCalls = counter.calls;
        if (c.joinMs !== undefined) {
          c.joinRatioToRtt = round(c.joinMs / rttMs, 0);
          c.joinRatioToTtl = round(c.joinMs / TTL_MS, 3);
        }
        if (c.leaveMs !== undefined) {
          c.leaveRatioToRtt = round(c.leaveMs / rttMs, 0);
          c.leaveRatioToTtl = round(c.leaveMs / TTL_MS, 3);
        }
      } finally {
        await Promise.all(sites.map((x) => x.leave().catch(() => undefined)));
        await Promise.all(stores.map((x) => x.close().catch(() => undefined)));
      }
    }
  } finally {
    await server.stop();
  }
  return out;
}

// ---- main ------------------------------------------------------------------------------------

export async function run(args: string[]): Promise<void> {
  const json = args.includes('--json');
  const quick = args.includes('--quick');
  const sArg = args.indexOf('--sections');
  const sections = new Set(
    sArg >= 0 ? (args[sArg + 1] ?? '').split(',') : ['compute', 'route', 'balance', 'movement', 'convergence'],
  );
  const cArg = args.indexOf('--convergence-slots');
  const convergenceSlots =
    cArg >= 0 ? (args[cArg + 1] ?? '').split(',').map(Number) : args.includes('--quick') ? [1024] : [1024, 16384];
  const started = Date.now();
  const result: Record<string, unknown> = { bench: 'slots', quick };
  const out: string[] = [];

  if (sections.has('compute')) {
    log('placement compute…');
    const c = computeCases(quick);
    result['compute'] = c;
    out.push(`1. Placement compute, ${SLOTS} slots × 200 sites × R=${R} (median)`);
    const rows: string[][] = [['case', 'wall', 'cpu', 'ratio to 20 ms target', 'ratio to Go 2.1 s']];
    for (const x of c.cases) {
      rows.push([x.name, `${x.wallMs} ms`, `${x.cpuMs} ms`, `${x.ratioToTarget}×`, `${x.ratioToGo}×`]);
    }
    out.push(table(rows));
    out.push(
      `straightforward (rankNodes per slot: score + sort 200 sites), equal weights, 3 zones: ${c.naiveMs} ms; ` +
        `ratio ${c.naiveRatio}× (same replica sets)`,
    );
    out.push('');
  }
  if (sections.has('route')) {
    log('route lookups…');
    const l = lookups(quick);
    result['route'] = l;
    out.push(`2. Route lookup, ${SLOTS} slots × 200 sites × R=${R}, ${l.keys} distinct keys, ${l.lookups} lookups`);
    out.push(
      table([
        ['operation', 'ns/op (median)', 'ratio to 200 ns target'],
        ['route(slotForKey(key))', String(l.routeKeyNs), `${l.ratioToTarget}×`],
        ['slotForKey(key)', String(l.slotForKeyNs), `${round(l.slotForKeyNs / TARGET_LOOKUP_NS, 3)}×`],
        ['route(slot)', String(l.routeSlotNs), `${round(l.routeSlotNs / TARGET_LOOKUP_NS, 3)}×`],
      ]),
    );
    out.push(
      `table build ${l.buildMs} ms; store calls per lookup: 0; heap growth ≈ ${l.heapDeltaBytesPerLookup} bytes/lookup`,
    );
    out.push('');
  }
  if (sections.has('balance')) {
    log('balance…');
    const b = balance();
    result['balance'] = b;
    out.push('3. Balance per site (max/mean, min/mean)');
    const rows: string[][] = [
      ['case', 'replicas max', 'replicas min', 'primaries max', 'primaries min', 'top-ranked primary max'],
    ];
    for (const x of b) {
      rows.push([
        x.name,
        `${x.replicasMaxOverMean}`,
        `${x.replicasMinOverMean}`,
        `${x.primariesMaxOverMean}`,
        `${x.primariesMinOverMean}`,
        `${x.topRankedPrimariesMaxOverMean}`,
      ]);
    }
    out.push(table(rows));
    out.push('top-ranked primary: the primary as the plain rendezvous winner, without the balancing pass');
    out.push('');
  }
  if (sections.has('movement')) {
    log('movement…');
    const m = movement();
    result['movement'] = m;
    out.push(`4. Movement on a join / leave (${SLOTS} slots, R=${R}, 3 zones, with previous placement)`);
    const rows: string[][] = [
      ['case', 'replicas gained', 'ideal', 'ratio', 'primaries changed', 'ideal', 'ratio', 'without previous'],
    ];
    for (const x of m) {
      rows.push([
        x.name,
        String(x.gained),
        String(x.idealGained),
        `${x.gainedRatio}×`,
        String(x.primaryChanges),
        String(x.idealPrimaryChanges),
        `${x.primaryRatio}×`,
        String(x.primaryChangesWithoutPrevious),
      ]);
    }
    out.push(table(rows));
    out.push('ideal: slotCount × R / N replicas (N = sites after a join, before a leave), slotCount / N primaries');
  }
  if (sections.has('convergence')) {
    const cs = await convergence(convergenceSlots);
    result['convergence'] = cs;
    out.push('');
    out.push(
      `5. Convergence on a private Redis: ${cs[0]?.sites ?? 5} SlotsMember instances in one process (own store client ` +
        `each), R=${R}, TTL ${cs[0]?.ttlMs ?? 0} ms, migration = 0 ms; store round trip (get) ${cs[0]?.rttMs ?? '?'} ms`,
    );
    const ms = (x: number | undefined): string => (x === undefined ? '—' : `${x} ms`);
    const rows: string[][] = [
      ['slots', 'start (4 sites)', 'join', '÷ RTT', '÷ TTL', 'store calls', 'leave', '÷ RTT', '÷ TTL', 'store calls'],
    ];
    for (const x of cs) {
      rows.push([
        String(x.slots),
        ms(x.startMs),
        ms(x.joinMs),
        x.joinRatioToRtt === undefined ? '—' : `${x.joinRatioToRtt}×`,
        x.joinRatioToTtl === undefined ? '—' : `${x.joinRatioToTtl}×`,
        String(x.joinStoreCalls ?? '—'),
        ms(x.leaveMs),
        x.leaveRatioToRtt === undefined ? '—' : `${x.leaveRatioToRtt}×`,
        x.leaveRatioToTtl === undefined ? '—' : `${x.leaveRatioToTtl}×`,
        String(x.leaveStoreCalls ?? '—'),
      ]);
    }
    out.push(table(rows));
    for (const x of cs) if (x.note !== undefined) out.push(`${x.slots} slots: ${x.note}`);
    out.push(
      'settled: every site routes every slot the same, to a primary and R-1 ready secondaries (polled every 50 ms)',
    );
  }
  process.stdout.write(`${out.join('\n')}\n`);
  result['totalMs'] = Date.now() - started;
  if (json) process.stdout.write(`${JSON.stringify(result)}\n`);
}
