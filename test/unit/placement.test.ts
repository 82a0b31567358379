/** Placement properties: balance, determinism, and movement against the ideal. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { countMoves, place, rankNodes, shares, type PlacementNode } from '../../src/placement/index.js';

const nodeArb = fc
  .uniqueArray(fc.string({ minLength: 1, maxLength: 8 }), { minLength: 1, maxLength: 12 })
  .chain((ids) =>
    fc.tuple(
      fc.constant(ids),
      fc.array(fc.constantFrom(1, 1, 1, 2, 3, 0.5), { minLength: ids.length, maxLength: ids.length }),
    ),
  )
  .map(([ids, ws]) => ids.map((id, i): PlacementNode => ({ id, weight: ws[i]! })));
const resourcesArb = fc.uniqueArray(fc.string({ minLength: 1, maxLength: 12 }), { maxLength: 200 });

function counts(a: Map<string, string>): Map<string, number> {
  const c = new Map<string, number>();
  for (const n of a.values()) c.set(n, (c.get(n) ?? 0) + 1);
  return c;
}

function expectBalanced(nodes: PlacementNode[], resources: string[], a: Map<string, string>): void {
  expect(a.size).toBe(resources.length);
  const ids = new Set(nodes.map((n) => n.id));
  for (const r of resources) expect(ids.has(a.get(r)!)).toBe(true);
  const c = counts(a);
  for (const [id, share] of shares(nodes, resources.length)) {
    expect(Math.abs((c.get(id) ?? 0) - share)).toBeLessThan(1 + 1e-9);
  }
}

describe('sticky-balanced placement', () => {
  it('assigns every resource once, each node within one of its weighted share', () => {
    fc.assert(
      fc.property(nodeArb, resourcesArb, (nodes, resources) => {
        expectBalanced(nodes, resources, place('sticky-balanced', { nodes, resources }));
      }),
    );
  });

  it('is deterministic and independent of input order', () => {
    fc.assert(
      fc.property(nodeArb, resourcesArb, (nodes, resources) => {
        const a = place('sticky-balanced', { nodes, resources });
        const b = place('sticky-balanced', { nodes: [...nodes].reverse(), resources: [...resources].reverse() });
        expect([...b].sort()).toEqual([...a].sort());
      }),
    );
  });

  it('stays balanced and moves only the ideal number after any membership change', () => {
    fc.assert(
      fc.property(nodeArb, nodeArb, resourcesArb, (before, after, resources) => {
        const current = place('sticky-balanced', { nodes: before, resources });
        const next = place('sticky-balanced', { nodes: after, resources, current });
        expectBalanced(after, resources, next);
        // Ideal: a surviving node keeps min(held, its quota) — so at most max(0, held - ceil(share)) of its
        // resources move, and nothing else that was on a surviving node moves.
        const survivors = new Set(after.map((n) => n.id));
        const share = shares(after, resources.length);
        const held = counts(new Map([...current].filter(([, n]) => survivors.has(n))));
        let ideal = 0;
        for (const [id, h] of held) ideal += Math.max(0, h - Math.ceil(share.get(id)! - 1e-9));
        const movedFromSurvivors = [...next].filter(
          ([r, n]) => survivors.has(current.get(r)!) && current.get(r) !== n,
        ).length;
        expect(movedFromSurvivors).toBeLessThanOrEqual(ideal);
      }),
    );
  });

  it('moves exactly the ideal on a join to a balanced group: K/(N+1) resources', () => {
    const nodes = Array.from({ length: 10 }, (_, i) => ({ id: `n${i}` }));
    const resources = Array.from({ length: 1000 }, (_, i) => `q${i}`);
    const a = place('sticky-balanced', { nodes, resources });
    const b = place('sticky-balanced', { nodes: [...nodes, { id: 'n10' }], resources, current: a });
    expect(countMoves(a, b)).toBe(Math.floor(1000 / 11));
    expect(counts(b).get('n10')).toBe(Math.floor(1000 / 11));
    // A leave moves only the leaver's resources.
    const c = place('sticky-balanced', { nodes: nodes.slice(1), resources, current: a });
    expect(countMoves(new Map([...a].filter(([, n]) => n !== 'n0')), c)).toBe(0);
  });

  it('does not disturb anyone when nothing changed', () => {
    fc.assert(
      fc.property(nodeArb, resourcesArb, (nodes, resources) => {
        const a = place('sticky-balanced', { nodes, resources });
        expect(countMoves(a, place('sticky-balanced', { nodes, resources, current: a }))).toBe(0);
      }),
    );
  });

  it('rejects duplicate node ids, duplicate resources and bad weights', () => {
    expect(() => place('sticky-balanced', { nodes: [{ id: 'a' }, { id: 'a' }], resources: [] })).toThrow(/duplicate/);
    expect(() => place('sticky-balanced', { nodes: [{ id: 'a' }], resources: ['x', 'x'] })).toThrow(/unique/);
    expect(() => place('sticky-balanced', { nodes: [{ id: 'a', weight: 0 }], resources: [] })).toThrow(/weight/);
    expect(() => place('sticky-balanced', { nodes: [{ id: 'a', weight: Number.NaN }], resources: [] })).toThrow(
      /weight/,
    );
    expect(() => place('nope' as 'round-robin', { nodes: [{ id: 'a' }], resources: [] })).toThrow(/strategy/);
  });
});

describe('round-robin placement', () => {
  it('splits evenly (within one), ignoring weights', () => {
    fc.assert(
      fc.property(nodeArb, resourcesArb, (nodes, resources) => {
        const c = counts(place('round-robin', { nodes, resources }));
        const vals = nodes.map((n) => c.get(n.id) ?? 0);
        expect(Math.max(...vals) - Math.min(...vals)).toBeLessThanOrEqual(1);
      }),
    );
  });
});

describe('rendezvous placement', () => {
  it('moves only the leaver’s resources on a leave, and only to the joiner on a join', () => {
    fc.assert(
      fc.property(nodeArb, resourcesArb, (nodes, resources) => {
        fc.pre(nodes.length >= 2);
        const a = place('rendezvous', { nodes, resources });
        const leaver = nodes[0]!.id;
        const b = place('rendezvous', { nodes: nodes.slice(1), resources });
        for (const [r, n] of a) if (n !== leaver) expect(b.get(r)).toBe(n);
        const c = place('rendezvous', { nodes: [...nodes, { id: '\u0000joiner' }], resources });
        for (const [r, n] of c) if (n !== '\u0000joiner') expect(a.get(r)).toBe(n);
      }),
    );
  });

  it('follows weights statistically', () => {
    const nodes = [
      { id: 'a', weight: 1 },
      { id: 'b', weight: 3 },
    ];
    const resources = Array.from({ length: 4000 }, (_, i) => `r${i}`);
    const c = counts(place('rendezvous', { nodes, resources }));
    expect((c.get('b') ?? 0) / 4000).toBeGreaterThan(0.7);
    expect((c.get('b') ?? 0) / 4000).toBeLessThan(0.8);
  });

  it('ranks replicas in distinct zones first, deterministically', () => {
    const nodes = [
      { id: 'a1', zone: 'a' },
      { id: 'a2', zone: 'a' },
      { id: 'a3', zone: 'a' },
      { id: 'b1', zone: 'b' },
      { id: 'c1', zone: 'c' },
    ];
    for (let i = 0; i < 50; i++) {
      const top = rankNodes(`slot${i}`, nodes, 3, { spreadZones: true });
      expect(new Set(top.map((n) => n.zone)).size).toBe(3);
      expect(rankNodes(`slot${i}`, [...nodes].reverse(), 3, { spreadZones: true })).toEqual(top);
    }
  });
});
