/** The shared waiting helpers (wait.ts). */
import { describe, expect, it } from 'vitest';
import { eventually, sleep } from './wait.js';

describe('sleep', () => {
  it('resolves after about the given time', async () => {
    const t0 = Date.now();
    await sleep(50);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(45);
  });
});

describe('eventually', () => {
  it('retries a predicate until it returns true', async () => {
    let n = 0;
    expect(await eventually(() => ++n >= 3, { what: 'three tries', timeoutMs: 1000, intervalMs: 5 })).toBe(true);
    expect(n).toBe(3);
  });

  it('retries an assertion until it stops throwing, and returns what the check returned', async () => {
    let n = 0;
    const got = await eventually(
      async () => {
        n++;
        expect(n).toBeGreaterThan(2);
        return `after ${n}`;
      },
      { what: 'n > 2', timeoutMs: 1000, intervalMs: 5 },
    );
    expect(got).toBe('after 3');
  });

  it('passes on a check that returns nothing (an assertion that held)', async () => {
    await eventually(() => undefined, { what: 'nothing', timeoutMs: 0 });
  });

  it('on timeout says what was awaited, for how long, the last failure and the context', async () => {
    const t0 = Date.now();
    const error = await eventually(() => false, {
      what: 'the flag',
      timeoutMs: 120,
      intervalMs: 20,
      context: () => 'flag is still down',
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(Date.now() - t0).toBeGreaterThanOrEqual(115);
    expect(error).toBeInstanceOf(Error);
    const message = (error as Error).message;
    expect(message).toMatch(/^timed out waiting for the flag: not so after \d+ ms \(bound 120 ms, \d+ tries\)/);
    expect(message).toContain('last try: it returned false');
    expect(message).toContain('\nflag is still down');
  });

  it('reports the error the check last threw, as message and cause', async () => {
    let n = 0;
    const error = await eventually(
      () => {
        throw new Error(`attempt ${++n}`);
      },
      { what: 'a throwing check', timeoutMs: 60, intervalMs: 10 },
    ).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(error?.message).toContain(`last try: it threw Error: attempt ${n}`);
    expect((error?.cause as Error).message).toBe(`attempt ${n}`);
  });

  it('tries once more at the deadline, and at least once with a zero bound', async () => {
    let n = 0;
    await expect(eventually(() => ++n > 1, { what: 'a second try', timeoutMs: 0 })).rejects.toThrow(/1 try\)/);
    const t0 = Date.now();
    let last = 0;
    await expect(
      eventually(
        () => {
          last = Date.now() - t0;
          return false;
        },
        { what: 'never', timeoutMs: 100, intervalMs: 60 },
      ),
    ).rejects.toThrow(/never/);
    expect(last).toBeGreaterThanOrEqual(95);
  });

  it('refuses a bound or an interval that is not a number', async () => {
    await expect(eventually(() => true, { what: 'x', timeoutMs: Number.NaN })).rejects.toThrow(RangeError);
    await expect(eventually(() => true, { what: 'x', timeoutMs: 10, intervalMs: 0 })).rejects.toThrow(RangeError);
  });
});
