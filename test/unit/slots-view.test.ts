/**
 * What a slots site reads and how it tells which slots changed: the `held/`
 * summaries that stand in for reading every primary lock, and the change
 * detection that lets a round decide only about changed slots. A slot whose
 * inputs changed but that the detection misses would wait for the periodic
 * full pass; this checks none is missed.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CorruptDataError } from '../../src/errors.js';
import {
  decodeHeld,
  emptyReady,
  encodeHeld,
  hasReady,
  PLAN_CHUNK_SLOTS,
  setReady,
  SlotKeys,
  type ReadyBits,
  type SlotAssignment,
} from '../../src/protocol/slots/keys.js';
import { changedSlots, type SlotsView as FullView, type Holder } from '../../src/protocol/slots/view.js';
import type { KeyValue } from '../../src/store/contract.js';

describe('held summaries', () => {
  it('round-trip, with epoch 0 standing for the summary key’s own mod revision', () => {
    const held = new Map([
      [5, 0],
      [1, 0],
      [700, 42],
      [3, 42],
    ]);
    const text = encodeHeld(held);
    expect(decodeHeld('k', text, PLAN_CHUNK_SLOTS, 99)).toEqual(
      new Map([
        [1, 99],
        [5, 99],
        [3, 42],
        [700, 42],
      ]),
    );
    // Grouped by epoch: a take-over batch of sixty slots costs one epoch, not sixty.
    expect(JSON.parse(text)).toEqual({
      v: 1,
      g: [
        [0, 1, 5],
        [42, 3, 700],
      ],
    });
  });

  it('reports a corrupt summary with a typed error naming the key', () => {
    const bad = [
      'not json',
      '{"v":1}',
      '{"v":1,"g":[[1]]}',
      '{"v":1,"g":[[-1,3]]}',
      '{"v":1,"g":[["x",3]]}',
      '{"v":1,"g":[[1,3,3]]}',
      '{"v":1,"g":[[1,3],[2,3]]}',
      '{"v":1,"g":[[1,1024]]}',
      '{"v":1,"g":[[1,1.5]]}',
      '{"v":2,"g":[]}',
    ];
    for (const value of bad) {
      expect(() => decodeHeld('s/c/held/a/000', value, PLAN_CHUNK_SLOTS, 1), value).toThrow(CorruptDataError);
      expect(() => decodeHeld('s/c/held/a/000', value, PLAN_CHUNK_SLOTS, 1), value).toThrow(/s\/c\/held\/a\/000/);
    }
    // The last chunk of 1000 slots has 1000 - 0 entries: offset 999 is in, 1000 is not.
    expect(decodeHeld('k', '{"v":1,"g":[[1,999]]}', 1000, 1).size).toBe(1);
    expect(() => decodeHeld('k', '{"v":1,"g":[[1,1000]]}', 1000, 1)).toThrow(CorruptDataError);
  });

  it('keys name the site and chunk, and other keys are not taken for summaries', () => {
    const k = new SlotKeys('c');
    expect(k.ofHeldKey(k.heldChunk('site-1:a@b', 15))).toEqual({ site: 'site-1:a@b', chunk: 15 });
    expect(k.ofHeldKey(`${k.held}a/b/001`)).toBeUndefined();
    expect(k.ofHeldKey(`${k.held}a/01`)).toBeUndefined();
    expect(k.ofHeldKey(k.primary(3))).toBeUndefined();
  });
});

// ---- change detection ----------------------------------------------------------------

const SITES = ['a', 'b', 'c'] as const;

interface Model {
  slotCount: number;
  plan: (SlotAssignment | undefined)[];
  ready: Map<string, ReadyBits>;
  holders: (Holder | undefined)[];
}

let revision = 1;

function kv(key: string, createRevision: number, modRevision: number): KeyValue {
  return { key, value: '', version: 1, createRevision, modRevision, sessionId: undefined };
}

/** A view of `m` in which the parts named in `bump` (or absent from `prev`) get new revisions. */
function view(m: Model, prev: FullView | undefined, bump: Set<string>): FullView {
  const keys = new SlotKeys('c');
  const rev = revision++;
  const planRevisions = new Map<number, number>();
  for (let c = 0; c < Math.ceil(m.slotCount / PLAN_CHUNK_SLOTS); c++) {
    const old = prev?.planRevisions.get(c);
    planRevisions.set(c, old === undefined || bump.has(`plan/${c}`) ? rev : old);
  }
  const readyKvs = new Map<string, KeyValue>();
  for (const id of m.ready.keys()) {
    const old = prev?.readyKvs.get(id);
    readyKvs.set(id, old === undefined || bump.has(`ready/${id}`) ? kv(id, old?.createRevision ?? rev, rev) : old);
  }
  const heldKvs = new Map<string, KeyValue>();
  m.holders.forEach((h, s) => {
    if (h === undefined) return;
    const key = keys.heldChunk(h.site, Math.floor(s / PLAN_CHUNK_SLOTS));
    if (heldKvs.has(key)) return;
    const old = prev?.heldKvs.get(key);
    heldKvs.set(key, old === undefined || bump.has(key) ? kv(key, old?.createRevision ?? rev, rev) : old);
  });
  return {
    config: { slotCount: m.slotCount, replicas: 3, minSites: 1 },
    sites: new Map(SITES.map((id) => [id, { id, zone: '', weight: 1, address: undefined, sessionId: `s-${id}` }])),
    plan: [...m.plan],
    planRevisions,
    generation: 1,
    ready: new Map([...m.ready].map(([id, bits]) => [id, bits.slice()])),
    readyKvs,
    probes: [],
    holders: [...m.holders],
    holderSites: m.holders.map((h) => h?.site),
    heldKvs,
    joinsRevision: 0,
    revision: rev,
  };
}

const site = fc.constantFrom(...SITES);
const assignment = fc.option(
  fc.record({ assigned: fc.uniqueArray(site, { maxLength: 3 }), primary: fc.option(site, { nil: undefined }) }),
  { nil: undefined },
);
const change = fc.oneof(
  fc.record({ kind: fc.constant('plan' as const), at: fc.nat(), to: assignment }),
  fc.record({ kind: fc.constant('ready' as const), at: fc.nat(), site }),
  fc.record({
    kind: fc.constant('holder' as const),
    at: fc.nat(),
    to: fc.option(fc.record({ site, epoch: fc.integer({ min: 1, max: 1e9 }) }), { nil: undefined }),
  }),
);

describe('changedSlots', () => {
  it('names every slot whose plan entry, ready bits or lock holder changed', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2500 }),
        fc.array(change, { maxLength: 40 }),
        fc.array(fc.nat(), { maxLength: 3 }),
        (slotCount, changes, spurious) => {
          const m: Model = {
            slotCount,
            plan: Array.from({ length: slotCount }, (_, s) => ({ assigned: [SITES[s % 3]!], primary: SITES[s % 3] })),
            ready: new Map(SITES.map((id) => [id, emptyReady(slotCount)])),
            holders: Array.from({ length: slotCount }, (_, s) =>
              s % 2 === 0 ? { site: SITES[s % 3]!, epoch: 1, sessionId: `s-${SITES[s % 3]!}` } : undefined,
            ),
          };
          const before = view(m, undefined, new Set());
          const bump = new Set<string>();
          const keys = new SlotKeys('c');
          const touched = new Set<number>();
          for (const c of changes) {
            const s = c.at % slotCount;
            const chunk = Math.floor(s / PLAN_CHUNK_SLOTS);
            if (c.kind === 'plan') {
              m.plan[s] = c.to;
              bump.add(`plan/${chunk}`);
            } else if (c.kind === 'ready') {
              const bits = m.ready.get(c.site)!.slice();
              setReady(bits, s, !hasReady(bits, s));
              m.ready.set(c.site, bits);
              bump.add(`ready/${c.site}`);
            } else {
              const old = m.holders[s];
              if (old !== undefined) bump.add(keys.heldChunk(old.site, chunk));
              m.holders[s] = c.to && { ...c.to, sessionId: `s-${c.to.site}` };
              if (c.to !== undefined) bump.add(keys.heldChunk(c.to.site, chunk));
            }
            touched.add(s);
          }
          // A rewrite with the same content also gets a new revision: reported or not, it must not hide others.
          for (const x of spurious) bump.add(`plan/${x % Math.ceil(slotCount / PLAN_CHUNK_SLOTS)}`);
          const after = view(m, before, bump);
          const got = changedSlots(before, after);
          expect(got).toBeDefined();
          for (let s = 0; s < slotCount; s++) {
            const a = before.plan[s];
            const b = after.plan[s];
            const planDiffers = JSON.stringify(a) !== JSON.stringify(b);
            const readyDiffers = SITES.some(
              (id) => hasReady(before.ready.get(id), s) !== hasReady(after.ready.get(id), s),
            );
            const h = before.holders[s];
            const g = after.holders[s];
            const holderDiffers = h?.site !== g?.site || h?.epoch !== g?.epoch;
            if (planDiffers || readyDiffers || holderDiffers) expect(got!.has(s), `slot ${s}`).toBe(true);
          }
          // And it stays about the slots that were touched (no full pass in disguise).
          for (const s of got!) expect(touched.has(s), `slot ${s} reported but untouched`).toBe(true);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('asks for a full pass when the live sites or their addresses change', () => {
    const m: Model = {
      slotCount: 8,
      plan: new Array<SlotAssignment | undefined>(8).fill(undefined),
      ready: new Map(),
      holders: new Array<Holder | undefined>(8).fill(undefined),
    };
    const a = view(m, undefined, new Set());
    const fewer = { ...a, sites: new Map([...a.sites].slice(1)) };
    expect(changedSlots(a, fewer)).toBeUndefined();
    const moved = new Map(a.sites);
    moved.set('a', { ...a.sites.get('a')!, address: 'elsewhere:1' });
    expect(changedSlots(a, { ...a, sites: moved })).toBeUndefined();
    expect(changedSlots(a, { ...a })).toEqual(new Set());
  });
});
