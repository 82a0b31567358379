import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import {
  checkEvents,
  checkOperations,
  HistoryRecorder,
  operationsFromEvents,
  type CheckResult,
  type HistoryEvent,
} from '../../src/sim/linearizability.js';
import {
  kvModel,
  registerModel,
  type KvInput,
  type KvOperation,
  type KvOutput,
  type RegisterInput,
} from '../../src/sim/linearizability-models.js';
import { kvHistory } from '../harness/histories.js';

type RegOp = {
  client?: number;
  input: RegisterInput<number>;
  callTime: number;
  returnTime?: number;
  output?: number | boolean;
};

const kv = kvModel();
const reg = registerModel(0);

/** A known-outcome operation on `key`; `ret === undefined`: outcome unknown. */
function op(
  client: number,
  call: number,
  ret: number | undefined,
  input: KvInput,
  output: KvOutput = null,
): KvOperation {
  return ret === undefined
    ? { client, input, callTime: call }
    : { client, input, callTime: call, returnTime: ret, output };
}
const get = (key: string): KvInput => ({ op: 'get', key });
const put = (key: string, value: string): KvInput => ({ op: 'put', key, value });
const append = (key: string, value: string): KvInput => ({ op: 'append', key, value });
const cas = (key: string, expected: string | null, value: string): KvInput => ({ op: 'cas', key, expected, value });

function read(client: number, call: number, ret: number, value: number): RegOp {
  return { client, input: { op: 'read' }, callTime: call, returnTime: ret, output: value };
}
function write(client: number, call: number, ret: number | undefined, value: number): RegOp {
  return ret === undefined
    ? { client, input: { op: 'write', value }, callTime: call }
    : { client, input: { op: 'write', value }, callTime: call, returnTime: ret, output: 0 };
}

function expectResult<I, O>(r: CheckResult<I, O>, want: 'ok' | 'illegal' | 'unknown'): void {
  if (r.result !== want) {
    throw new Error(`expected ${want}, got ${r.result}${r.result === 'ok' ? '' : `:\n${r.message}`}`);
  }
}

describe('linearizability checker: histories from the literature', () => {
  it('a read concurrent with a write may see either value (Herlihy & Wing style register)', () => {
    // write(100) is slow; one read overlapping it sees the new value, a later-starting one the old.
    const h = [write(1, 0, 100, 100), read(2, 25, 75, 100), read(3, 30, 60, 0)];
    expectResult(checkOperations(reg, h), 'ok');
  });

  it('new-old inversion: a read returns the old value after another read returned the new one', () => {
    const h = [write(1, 0, 100, 200), read(2, 10, 30, 200), read(3, 40, 90, 0)];
    expectResult(checkOperations(reg, h), 'illegal');
  });

  it('sequential consistency is not enough: a read that ignores a write completed before it', () => {
    // Sequentially consistent (client 2 could be ordered before the write) but not linearizable.
    const h = [write(1, 0, 10, 1), read(2, 20, 30, 0)];
    expectResult(checkOperations(reg, h), 'illegal');
  });

  it('compare-and-swap: exactly one of two concurrent cas from the same value wins', () => {
    const both: RegOp[] = [
      { client: 1, input: { op: 'cas', expected: 0, value: 1 }, callTime: 0, returnTime: 10, output: true },
      { client: 2, input: { op: 'cas', expected: 0, value: 2 }, callTime: 0, returnTime: 10, output: true },
    ];
    expectResult(checkOperations(reg, both), 'illegal');
    const one: RegOp[] = [{ ...both[0]! }, { ...both[1]!, output: false }, read(3, 11, 12, 1)];
    expectResult(checkOperations(reg, one), 'ok');
    expectResult(checkOperations(reg, [...one.slice(0, 2), read(3, 11, 12, 2)]), 'illegal');
  });

  it('an empty history and a history of unknown operations only are linearizable', () => {
    expectResult(checkOperations(kv, []), 'ok');
    expectResult(checkOperations(kv, [op(1, 0, undefined, put('x', 'a'))]), 'ok');
  });
});

describe('linearizability checker: planted bugs are caught', () => {
  it('a stale read: get returns an old value after a newer put completed', () => {
    const h = [
      op(1, 0, 1, put('x', 'a')),
      op(2, 0, 1, put('y', 'q')),
      op(1, 2, 3, put('x', 'b')),
      op(2, 4, 5, get('x'), 'a'),
      op(3, 4, 5, get('y'), 'q'),
    ];
    const r = checkOperations(kv, h);
    expectResult(r, 'illegal');
    if (r.result !== 'illegal') return;
    expect(r.explanation.blocked.input).toEqual(get('x'));
    expect(r.explanation.linearized.map((o) => o.input)).toEqual([put('x', 'a'), put('x', 'b')]);
    expect(r.explanation.state).toBe('"b"');
    expect(r.message).toContain('not linearizable: key "x", partition 1 of 2 (3 operations)');
    expect(r.message).toContain('get("x") → "a"');
    expect(r.message).toContain('longest linearizable prefix found (2 operations)');
    expect(r.message).toContain('client 2, 4–5');
  });

  it('a lost write: an acknowledged put is never visible to later reads', () => {
    const h = [
      op(1, 0, 1, put('x', 'a')),
      op(2, 2, 3, put('x', 'b')),
      op(1, 4, 5, get('x'), 'a'),
      op(3, 6, 7, get('x'), 'a'),
    ];
    expectResult(checkOperations(kv, h), 'illegal');
    // An acknowledged append lost: the later read shows only the first one.
    const appends = [op(1, 0, 1, append('l', '1')), op(2, 2, 3, append('l', '2')), op(3, 4, 5, get('l'), '1')];
    expectResult(checkOperations(kv, appends), 'illegal');
    // A put never seen at all: the key reads as absent after it was acknowledged.
    expectResult(checkOperations(kv, [op(1, 0, 1, put('z', 'a')), op(2, 2, 3, get('z'), null)]), 'illegal');
  });

  it('a double apply: one append applied twice', () => {
    const h = [op(1, 0, 1, append('x', 'a')), op(2, 0, 3, append('x', 'b')), op(3, 4, 5, get('x'), 'aba')];
    const r = checkOperations(kv, h);
    expectResult(r, 'illegal');
    // Two appends that really happened (a retry recorded as a second operation) do explain "aa": a client's
    // retry of one command must be recorded as one operation for a double apply to be seen.
    const twice = [op(1, 0, undefined, append('x', 'a')), op(1, 5, 6, append('x', 'a')), op(2, 7, 8, get('x'), 'aa')];
    expectResult(checkOperations(kv, twice), 'ok');
    expectResult(checkOperations(kv, [twice[1]!, twice[2]!]), 'illegal');
  });

  it('a read of a value never written', () => {
    const h = [op(1, 0, 10, put('x', 'a')), op(2, 0, 10, put('x', 'b')), op(3, 5, 6, get('x'), 'c')];
    const r = checkOperations(kv, h);
    expectResult(r, 'illegal');
    if (r.result !== 'illegal') return;
    expect(r.explanation.linearized).toHaveLength(2);
    expect(r.explanation.candidates.map((o) => o.input)).toEqual([get('x')]);
  });

  it('a cas that reports success although the value was not the expected one', () => {
    const h = [op(1, 0, 1, put('x', 'a')), op(2, 2, 3, cas('x', 'z', 'b'), true)];
    expectResult(checkOperations(kv, h), 'illegal');
  });
});

describe('linearizability checker: operations with unknown outcome', () => {
  it('a put with no response that later appears makes an otherwise illegal history linearizable', () => {
    const read = op(2, 5, 6, get('x'), 'a');
    expectResult(checkOperations(kv, [read]), 'illegal');
    expectResult(checkOperations(kv, [op(1, 0, undefined, put('x', 'a')), read]), 'ok');
  });

  it('an unknown operation may also never have happened', () => {
    const h = [op(1, 0, undefined, put('x', 'a')), op(2, 5, 6, get('x'), null), op(2, 7, 8, get('x'), null)];
    expectResult(checkOperations(kv, h), 'ok');
    // … but it cannot take effect and then be undone.
    const flip = [op(1, 0, undefined, put('x', 'a')), op(2, 5, 6, get('x'), 'a'), op(2, 7, 8, get('x'), null)];
    expectResult(checkOperations(kv, flip), 'illegal');
  });

  it('does not excuse a stale read', () => {
    // The unknown put of the new value cannot explain the old value read after a completed newer put.
    const h = [
      op(1, 0, 1, put('x', 'a')),
      op(1, 2, 3, put('x', 'b')),
      op(3, 2, undefined, put('x', 'c')),
      op(2, 4, 5, get('x'), 'a'),
    ];
    expectResult(checkOperations(kv, h), 'illegal');
    // Nor can an unknown put of the old value that was called only after the read returned.
    const late = [op(1, 0, 1, put('x', 'a')), op(1, 2, 3, put('x', 'b')), op(2, 4, 5, get('x'), 'a')];
    expectResult(checkOperations(kv, [...late, op(3, 6, undefined, put('x', 'a'))]), 'illegal');
    // Called before the read returned, it explains it.
    expectResult(checkOperations(kv, [...late, op(3, 4.5, undefined, put('x', 'a'))]), 'ok');
  });

  it('an unknown write that nobody observed is set aside only when that is sound', () => {
    // Unobserved: dropped before the search (the history stays linearizable either way).
    const h = [op(1, 0, 1, put('x', 'a')), op(2, 2, undefined, put('x', 'b')), op(3, 5, 6, get('x'), 'a')];
    expectResult(checkOperations(kv, h), 'ok');
    expect(kv.simplify!(h)).toHaveLength(2);
    // A failed cas can observe it without naming its value: it must stay, and it explains the failure.
    const failed = [
      op(1, 0, 1, put('x', 'a')),
      op(2, 2, undefined, put('x', 'b')),
      op(3, 3, 4, cas('x', 'a', 'c'), false),
    ];
    expect(kv.simplify!(failed)).toHaveLength(3);
    expectResult(checkOperations(kv, failed), 'ok');
    expectResult(checkOperations(kv, [failed[0]!, failed[2]!]), 'illegal');
    // Seen inside a longer value (appends after it): kept.
    const appended = [op(2, 0, undefined, put('x', 'b')), op(1, 1, 2, append('x', 'z')), op(3, 3, 4, get('x'), 'bz')];
    expectResult(checkOperations(kv, appended), 'ok');
    // A failed cas expecting a value nobody writes fails whatever happened: it cannot tell, the write is dropped.
    const blind = [
      op(1, 0, 1, put('x', 'a')),
      op(2, 2, undefined, put('x', 'b')),
      op(3, 3, 4, cas('x', 'q', 'c'), false),
    ];
    expect(kv.simplify!(blind)).toHaveLength(2);
    // A failed cas that returned before the write was called cannot tell either.
    const before = [op(3, 0, 1, cas('x', null, 'c'), false), op(2, 2, undefined, put('x', 'b'))];
    expect(kv.simplify!(before)).toHaveLength(1);
    // The register model does the same.
    const regFailed: RegOp[] = [
      write(1, 0, 1, 1),
      write(2, 2, undefined, 2),
      { client: 3, input: { op: 'cas', expected: 1, value: 3 }, callTime: 3, returnTime: 4, output: false },
    ];
    expectResult(checkOperations(reg, regFailed), 'ok');
    expect(reg.simplify!([write(1, 0, 1, 1), write(2, 2, undefined, 2), read(3, 5, 6, 1)])).toHaveLength(2);
  });

  it('an unknown put that a read saw took effect before that read returned', () => {
    const h = [
      op(1, 0, 1, put('x', 'a')),
      op(2, 2, undefined, put('x', 'b')),
      op(3, 5, 6, get('x'), 'b'),
      op(4, 9, 10, get('x'), 'b'),
    ];
    const s = kv.simplify!(h);
    expect(s[1]).toEqual({ client: 2, input: put('x', 'b'), callTime: 2, returnTime: 6, output: null });
    expectResult(checkOperations(kv, h), 'ok');
    // Then a read of the older value after it is a stale read.
    expectResult(checkOperations(kv, [...h, op(5, 11, 12, get('x'), 'a')]), 'illegal');
    // Not when another operation writes the same value too, or appends make values out of parts.
    expect(kv.simplify!([...h, op(6, 0, 1, put('x', 'b'))])[1]!.returnTime).toBeUndefined();
    expect(kv.simplify!([...h, op(6, 0, 1, append('x', 'z'))])[1]!.returnTime).toBeUndefined();
  });

  it('an unknown cas takes effect only when its expected value is there', () => {
    const h = [op(1, 0, 1, put('x', 'a')), op(2, 2, undefined, cas('x', 'z', 'b')), op(3, 5, 6, get('x'), 'b')];
    expectResult(checkOperations(kv, h), 'illegal');
    const h2 = [op(1, 0, 1, put('x', 'a')), op(2, 2, undefined, cas('x', 'a', 'b')), op(3, 5, 6, get('x'), 'b')];
    expectResult(checkOperations(kv, h2), 'ok');
  });
});

describe('linearizability checker: concurrency', () => {
  it('two concurrent writes take one order, seen the same by every later read', () => {
    const writes = [write(1, 0, 10, 1), write(2, 0, 10, 2)];
    expectResult(checkOperations(reg, [...writes, read(3, 11, 12, 1), read(3, 13, 14, 1)]), 'ok');
    expectResult(checkOperations(reg, [...writes, read(3, 11, 12, 2), read(4, 11, 14, 2)]), 'ok');
    expectResult(checkOperations(reg, [...writes, read(3, 11, 12, 1), read(3, 13, 14, 2)]), 'illegal');
  });

  it('the cache tells states apart by equal() when the model gives no hash', () => {
    // The same set of writes linearized in two orders leaves two states: the cache must keep both.
    const { hash: _hash, ...unhashed } = reg;
    const writes = [write(1, 0, 10, 1), write(2, 0, 10, 2), write(3, 0, 10, 3)];
    for (const last of [1, 2, 3]) {
      expectResult(checkOperations(unhashed, [...writes, read(4, 11, 12, last), read(4, 13, 14, last)]), 'ok');
    }
  });

  it('reads overlapping a write may flip once from old to new, never back', () => {
    const w = write(1, 0, 100, 1);
    expectResult(checkOperations(reg, [w, read(2, 10, 20, 0), read(2, 30, 40, 1), read(2, 50, 60, 1)]), 'ok');
    expectResult(checkOperations(reg, [w, read(2, 10, 20, 1), read(2, 30, 40, 0)]), 'illegal');
  });

  it('equal times count as concurrent (no false alarm from a coarse clock)', () => {
    expectResult(checkOperations(reg, [write(1, 0, 5, 1), read(2, 5, 6, 0)]), 'ok');
    expectResult(checkOperations(reg, [write(1, 0, 5, 1), read(2, 6, 7, 0)]), 'illegal');
  });

  it('partitions are independent: a bug in one key is found among many good ones', () => {
    const good = kvHistory(7, { ops: 2000, keys: 50, clients: 8, spread: 6 });
    expectResult(checkOperations(kv, good), 'ok');
    const end = Math.max(...good.map((o) => o.returnTime ?? o.callTime));
    const bad = [...good, op(9, end + 1, end + 2, put('k3', 'new')), op(9, end + 3, end + 4, get('k3'), 'v0')];
    const r = checkOperations(kv, bad);
    expectResult(r, 'illegal');
    if (r.result === 'illegal') expect(r.explanation.blocked.input).toEqual(get('k3'));
  });
});

describe('linearizability checker: histories as events', () => {
  it('pairs calls and returns; a call without a return has an unknown outcome', () => {
    const events: HistoryEvent<KvInput, KvOutput>[] = [
      { type: 'call', id: 'a', client: 1, time: 0, input: put('x', '1') },
      { type: 'call', id: 'b', client: 2, time: 1, input: get('x') },
      { type: 'return', id: 'b', time: 2, output: '1' },
    ];
    expect(operationsFromEvents(events)).toEqual([
      { client: 1, input: put('x', '1'), callTime: 0 },
      { client: 2, input: get('x'), callTime: 1, returnTime: 2, output: '1' },
    ]);
    expectResult(checkEvents(kv, events), 'ok');
    expectResult(checkEvents(kv, events.slice(1)), 'illegal');
    // In any order (one process's events after another's): the times order them.
    expect(operationsFromEvents([...events].reverse())).toEqual(operationsFromEvents(events));
  });

  it('refuses malformed histories with a typed error that says what is wrong', () => {
    expect(() => checkEvents(kv, [{ type: 'return', id: 1, time: 0, output: null }])).toThrow(
      /a return for id 1 has no call/,
    );
    const call = { type: 'call', id: 1, time: 5, input: get('x') } as const;
    expect(() => checkEvents(kv, [call, call])).toThrow(/called twice/);
    expect(() => checkEvents(kv, [call, { type: 'return', id: 1, time: 4, output: null }])).toThrow(/before its call/);
    expect(() => checkOperations(kv, [op(1, 5, 4, get('x'))])).toThrow(InvalidArgumentError);
    expect(() => checkOperations(kv, [{ input: get('x'), callTime: Number.NaN }])).toThrow(/finite callTime/);
    expect(() => checkOperations(kv, [], { maxStepPerPartition: 5 } as never)).toThrow(/maxStepsPerPartition/);
  });

  it('HistoryRecorder records ok, unknown and failed operations on an injected clock', () => {
    let t = 0;
    const h = new HistoryRecorder<KvInput, KvOutput>(() => t++);
    const a = h.call(1, put('x', 'a'));
    const b = h.call(2, put('x', 'b'));
    const c = h.call(3, put('x', 'c'));
    a.ok(null);
    b.unknown();
    c.failed();
    h.call(4, get('x')).ok('b');
    expect(h.operations()).toEqual([
      { client: 1, input: put('x', 'a'), callTime: 0, returnTime: 3, output: null },
      { client: 2, input: put('x', 'b'), callTime: 1 },
      { client: 4, input: get('x'), callTime: 4, returnTime: 5, output: 'b' },
    ]);
    expectResult(checkOperations(kv, h.operations()), 'ok');
  });
});

describe('linearizability checker: properties', () => {
  it('histories from a real sequential execution with random intervals around each point are linearizable', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 ** 31 - 1 }),
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: 0, max: 12 }),
        fc.constantFrom(0, 0.1, 0.3),
        fc.boolean(),
        (seed, keys, clients, spread, unknownRate, noAppends) => {
          const h = kvHistory(seed, { ops: 120, keys, clients, spread, unknownRate, neverAppliedRate: 0.5, noAppends });
          const r = checkOperations(kv, h, { maxStepsPerPartition: 2_000_000 });
          if (r.result !== 'ok') throw new Error(r.message);
        },
      ),
      { numRuns: 150 },
    );
  });

  it('a read changed to return a value never written is caught', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 ** 31 - 1 }),
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: 0, max: 12 }),
        fc.nat(),
        (seed, keys, clients, spread, pick) => {
          const h = kvHistory(seed, { ops: 80, keys, clients, spread, unknownRate: 0.1 });
          const reads = h.flatMap((o, i) => (o.input.op === 'get' && o.returnTime !== undefined ? [i] : []));
          fc.pre(reads.length > 0);
          const i = reads[pick % reads.length]!;
          const mutated = h.map((o, j) => (j === i ? { ...o, output: 'never-written' } : o));
          const r = checkOperations(kv, mutated, { maxStepsPerPartition: 2_000_000 });
          expect(r.result).toBe('illegal');
          if (r.result === 'illegal') expect(r.explanation.partition).toContain(mutated[i]);
        },
      ),
      { numRuns: 150 },
    );
  });
});

describe('linearizability checker: simplify is sound', () => {
  const values = ['a', 'b', 'c', 'ab'];
  const inputArb: fc.Arbitrary<KvInput> = fc.oneof(
    fc.constant(get('x')),
    fc.constantFrom(...values).map((v) => put('x', v)),
    fc.constantFrom('a', 'b').map((v) => append('x', v)),
    fc.tuple(fc.constantFrom(null, ...values), fc.constantFrom(...values)).map(([e, v]) => cas('x', e, v)),
    fc.constant<KvInput>({ op: 'delete', key: 'x' }),
  );
  const opArb: fc.Arbitrary<KvOperation> = fc
    .record({
      call: fc.integer({ min: 0, max: 20 }),
      length: fc.option(fc.integer({ min: 0, max: 8 }), { freq: 3 }),
      input: inputArb,
      read: fc.constantFrom(null, ...values),
      swapped: fc.boolean(),
    })
    .map(({ call, length, input, read, swapped }) =>
      op(
        1,
        call,
        length === null ? undefined : call + length,
        input,
        input.op === 'get' ? read : input.op === 'cas' ? swapped : null,
      ),
    );

  it('gives the same answer as the search without it, on random (mostly illegal) histories', () => {
    const { simplify: _simplify, ...plain } = kv;
    let ok = 0;
    fc.assert(
      fc.property(fc.array(opArb, { minLength: 1, maxLength: 9 }), (h) => {
        const a = checkOperations(kv, h).result;
        const b = checkOperations(plain, h).result;
        expect(a).toBe(b);
        if (a === 'ok') ok++;
      }),
      { numRuns: 3000 },
    );
    expect(ok).toBeGreaterThan(100);
  });
});

describe('linearizability checker: budget', () => {
  /** n concurrent writes of distinct values, then a read of a value none wrote: illegal, but only after 2^n tries. */
  function hard(n: number): RegOp[] {
    return [...Array.from({ length: n }, (_, i) => write(i, 0, 100, i + 1)), read(n, 200, 201, -1)];
  }

  it('a huge concurrent history with a tiny budget is unknown, never ok', () => {
    const r = checkOperations(reg, hard(40), { maxStepsPerPartition: 10_000 });
    expectResult(r, 'unknown');
    if (r.result === 'unknown') {
      expect(r.reason).toBe('step-budget');
      expect(r.undecidedPartitions).toEqual([0]);
      expect(r.stats.steps).toBe(10_000);
      expect(r.message).toContain('maxStepsPerPartition');
    }
    // A linearizable history that needs more steps than allowed is unknown too, not ok.
    const good = kvHistory(3, { ops: 10_000, keys: 1, clients: 8, spread: 6 });
    expectResult(checkOperations(kv, good, { maxStepsPerPartition: 100 }), 'unknown');
    expectResult(checkOperations(kv, good), 'ok');
  });

  it('the same kind of history, small enough, is decided', () => {
    const r = checkOperations(reg, hard(10));
    expectResult(r, 'illegal');
    if (r.result === 'illegal') expect(r.stats.maxCacheEntries).toBeGreaterThan(1000);
  });

  it('a wall-clock limit gives unknown for what is left, and an illegal partition still wins', () => {
    let t = 0;
    const now = (): number => (t += 1);
    const r = checkOperations(reg, hard(40), { timeLimitMs: 50, now });
    expectResult(r, 'unknown');
    if (r.result === 'unknown') expect(r.reason).toBe('time-limit');
    // Two partitions: an undecidable one first, then an illegal one: illegal is the answer.
    const hardKv = [
      ...Array.from({ length: 40 }, (_, i) => op(i, 0, 100, put('h', `v${i}`))),
      op(99, 200, 201, get('h'), 'never'),
    ];
    const bad = [...hardKv, op(1, 0, 1, put('b', '1')), op(2, 2, 3, get('b'), null)];
    const r2 = checkOperations(kv, bad, { maxStepsPerPartition: 10_000 });
    expectResult(r2, 'illegal');
    const r3 = checkOperations(kv, hardKv, { maxStepsPerPartition: 10_000 });
    expectResult(r3, 'unknown');
    expect(r3.result === 'unknown' && r3.message).toContain('key "h" (41 operations, 0 of unknown outcome)');
  });

  it('a bounded cache still decides (slower), and memoisation is what keeps it fast', () => {
    const noCache = checkOperations(reg, hard(8), { maxCacheBytes: 0, maxStepsPerPartition: 1e8 });
    const cached = checkOperations(reg, hard(8));
    expectResult(noCache, 'illegal');
    expect(noCache.stats.steps).toBeGreaterThan(cached.stats.steps * 10);
    // hard(8): 9 operations, one 32-bit word per set: 100 bytes an entry.
    const small = checkOperations(reg, hard(8), { maxCacheBytes: 100 * 100, maxStepsPerPartition: 1e8 });
    expectResult(small, 'illegal');
    expect(small.stats.maxCacheEntries).toBe(100);
  });
});
