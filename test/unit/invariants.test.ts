/**
 * Assertions: an invariant that must never break fails loudly — a typed, fatal InvariantError — not as a log
 * line. A member that finds one reports it and leaves (it cannot trust its own state any more).
 */
import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../../src/backends/memory/store.js';
import { invariant, InvariantError, RebalancerError } from '../../src/errors.js';
import { GroupAdmin, joinGroup } from '../../src/groups/index.js';
import { VirtualClock } from '../../src/store/clock.js';
import type { Store, Txn } from '../../src/store/contract.js';
import { drive } from '../harness/virtual-time.js';

describe('invariants', () => {
  it('invariant() throws a non-retryable InvariantError that says it is a bug', () => {
    expect(() => invariant(1 + 1 === 3, 'arithmetic')).toThrow(InvariantError);
    try {
      invariant(false, () => 'lazy message');
    } catch (e) {
      expect(e).toBeInstanceOf(RebalancerError);
      expect((e as InvariantError).code).toBe('INVARIANT_VIOLATED');
      expect((e as InvariantError).retryable).toBe(false);
      expect((e as InvariantError).message).toMatch(/lazy message.*bug/);
    }
    expect(() => invariant(true, 'fine')).not.toThrow();
  });

  it('a store that breaks its contract (an acquire "succeeds" at revision 0) stops the member: no handler runs, it reports and leaves', async () => {
    const clock = new VirtualClock(1000);
    const memory = new MemoryStore({ clock });
    await drive(clock, new GroupAdmin(memory, 'inv').add(['r1']));
    // The acquire transaction (it puts a held/ key) reports revision 0: no valid fencing token.
    const broken = new Proxy(memory, {
      get(target, prop) {
        const v = Reflect.get(target, prop, target) as unknown;
        if (prop !== 'txn') return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        return async (req: Txn) => {
          const r = await target.txn(req);
          const acquires = req.then.some((op) => op.op === 'put' && op.key.includes('/held/'));
          return acquires && r.succeeded ? { ...r, revision: 0 } : r;
        };
      },
    }) as Store;
    let ran = 0;
    const errors: unknown[] = [];
    let left = false;
    await drive(
      clock,
      joinGroup({
        store: broken,
        group: 'inv',
        node: { id: 'n1' },
        clock,
        handler: () => {
          ran++;
        },
      }).then((m) => {
        m.on('error', ({ error }) => errors.push(error));
        m.on('left', () => (left = true));
        return m;
      }),
    );
    for (let i = 0; i < 300 && !left; i++) await clock.runFor(10);
    expect(errors.some((e) => e instanceof InvariantError && /without a fencing token/.test(e.message))).toBe(true);
    expect(left).toBe(true);
    expect(ran).toBe(0);
  });
});
