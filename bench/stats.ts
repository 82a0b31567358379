/** Latency statistics for benchmarks. */
export interface LatencyStats {
  readonly n: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly meanMs: number;
}

export function stats(samplesMs: readonly number[]): LatencyStats {
  const s = [...samplesMs].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? Number.NaN;
  const mean = s.reduce((a, b) => a + b, 0) / Math.max(1, s.length);
  return { n: s.length, p50Ms: round(at(0.5)), p99Ms: round(at(0.99)), meanMs: round(mean) };
}

export function round(x: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** Time `n` sequential runs of `fn` after `warmup` unmeasured ones. */
export async function measure(
  fn: () => Promise<unknown>,
  n: number,
  warmup = Math.ceil(n / 10),
): Promise<LatencyStats> {
  for (let i = 0; i < warmup; i++) await fn();
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn();
    out.push(performance.now() - t0);
  }
  return stats(out);
}

/** Print a table of rows (first row = header). */
export function table(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows
    .map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  '))
    .join('\n');
}

/**
 * Measure several operations in interleaved rounds, so that drift in machine
 * load affects each of them alike and their ratios stay meaningful.
 */
export async function measureInterleaved(
  ops: Readonly<Record<string, () => Promise<unknown>>>,
  n: number,
  rounds = 5,
): Promise<Record<string, LatencyStats>> {
  const samples: Record<string, number[]> = {};
  for (const name of Object.keys(ops)) samples[name] = [];
  const per = Math.max(1, Math.ceil(n / rounds));
  for (const fn of Object.values(ops)) for (let i = 0; i < Math.ceil(per / 5); i++) await fn(); // warm-up
  for (let r = 0; r < rounds; r++) {
    for (const [name, fn] of Object.entries(ops)) {
      for (let i = 0; i < per; i++) {
        const t0 = performance.now();
        await fn();
        samples[name]!.push(performance.now() - t0);
      }
    }
  }
  const out: Record<string, LatencyStats> = {};
  for (const [name, xs] of Object.entries(samples)) out[name] = stats(xs);
  return out;
}
