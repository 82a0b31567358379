/**
 * The raft bench's load merge (bench/raft-load.ts): the Rebalancer target runs its load in three node processes and
 * reports their shares as one run, so merged quantiles must be those of one histogram holding every latency.
 */
import { describe, expect, it } from 'vitest';
import { LatencyHistogram, mergeLoads, type LoadPart } from '../../../bench/raft-load.js';

function part(latenciesMs: readonly number[], errors = 0, firstError?: string): LoadPart {
  const h = new LatencyHistogram();
  for (const ms of latenciesMs) h.recordMs(ms);
  return {
    result: {
      inFlight: 1,
      ops: h.count,
      errors,
      ...(firstError === undefined ? {} : { firstError }),
      seconds: 1,
      opsPerSecond: h.count,
      p50Ms: h.quantileMs(0.5),
      p99Ms: h.quantileMs(0.99),
      maxMs: h.maxMs,
      clientCpuUsPerOp: 1,
    },
    histogram: h.toData(),
  };
}

describe('raft bench load merge', () => {
  it('merged shares report the quantiles of all their latencies together', () => {
    const fast = Array.from({ length: 90 }, (_, i) => 1 + i / 100);
    const slow = Array.from({ length: 10 }, (_, i) => 50 + i);
    const whole = new LatencyHistogram();
    for (const ms of [...fast, ...slow]) whole.recordMs(ms);

    const merged = mergeLoads([part(fast), part(slow, 2, 'boom')], 6, 2000);
    expect(merged.ops).toBe(100);
    expect(merged.opsPerSecond).toBe(50);
    expect(merged.inFlight).toBe(6);
    expect(merged.errors).toBe(2);
    expect(merged.firstError).toBe('boom');
    expect(merged.p50Ms).toBeCloseTo(whole.quantileMs(0.5), 3);
    // The 99th percentile lies in the slow share: a merge that averaged the shares' p99 would miss it.
    expect(merged.p99Ms).toBeCloseTo(whole.quantileMs(0.99), 3);
    expect(merged.p99Ms).toBeGreaterThan(50);
    expect(merged.maxMs).toBe(59);
    // The shares' CPU was their whole process (also the server's): not a client figure.
    expect(merged.clientCpuUsPerOp).toBeNaN();
  });

  it('refuses a histogram of another layout', () => {
    const h = new LatencyHistogram();
    expect(() => h.add({ counts: [1, 2, 3], maxUs: 5 })).toThrow(RangeError);
  });
});
