/**
 * The closed-loop load of `npm run bench -- raft` (runs inside bench/raft-worker.ts, never in the measuring process).
 *
 * `inFlight` loops each issue one put, wait for its answer, and issue the next: the offered load follows the
 * target's speed (closed loop), so ops/s is what the target sustains at that concurrency. Keys are drawn from a
 * fixed key space with a seeded generator, so that two targets measured in one round receive the same sequence.
 *
 * Memory stays bounded whatever the duration: latencies go into a fixed log-linear histogram, not an array.
 */
import { Random } from '../src/sim/random.js';
import { round } from './stats.js';

/** Writes one key; resolves when the target acknowledged the write (committed, durable). */
export type PutFn = (key: string, value: Uint8Array) => Promise<void>;

export interface LoadOptions {
  readonly put: PutFn;
  readonly inFlight: number;
  /** Measured window, after the warm-up. */
  readonly durationMs: number;
  /** Unmeasured load first (connections, JIT, the target's caches). */
  readonly warmupMs: number;
  readonly seed: number;
  /** Size of the key space the keys are drawn from. */
  readonly keys?: number;
  readonly valueBytes?: number;
  /** Key prefix, so that two runs (or a probe) do not share keys unless they mean to. */
  readonly prefix?: string;
}

export interface LoadResult {
  readonly inFlight: number;
  /** Puts completed successfully inside the measured window. */
  readonly ops: number;
  /** Puts that failed inside the measured window (not counted in ops or latencies). */
  readonly errors: number;
  readonly firstError?: string;
  readonly seconds: number;
  readonly opsPerSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
  /** CPU (user + system) of the whole client process during the measured window, per successful put. */
  readonly clientCpuUsPerOp: number;
}

/** A LatencyHistogram as plain data. */
export interface HistogramData {
  readonly counts: readonly number[];
  readonly maxUs: number;
}

/** One process's share of a load: what mergeLoads needs to report the whole as if one client had run it. */
export interface LoadPart {
  readonly result: LoadResult;
  readonly histogram: HistogramData;
}

export const DEFAULT_KEYS = 10_000;
export const DEFAULT_VALUE_BYTES = 16;
/** Pause of one loop after a failed put. */
const ERROR_PAUSE_MS = 10;

/**
 * Latencies in microseconds, log-linear: 2^m .. 2^(m+1) split into SUB linear buckets, so every recorded value is
 * reported within 1/SUB (3 %) of itself, from 1 µs to hours, in a fixed 40 × 32 array.
 */
export class LatencyHistogram {
  static readonly SUB = 32;
  static readonly MAGNITUDES = 40;
  readonly #counts = new Float64Array(LatencyHistogram.SUB * LatencyHistogram.MAGNITUDES);
  #n = 0;
  #maxUs = 0;

  recordMs(ms: number): void {
    const us = Math.max(1, Math.round(ms * 1000));
    this.#maxUs = Math.max(this.#maxUs, us);
    const m = Math.min(LatencyHistogram.MAGNITUDES - 1, Math.floor(Math.log2(us)));
    const base = 2 ** m;
    const sub = Math.min(LatencyHistogram.SUB - 1, Math.floor(((us - base) / base) * LatencyHistogram.SUB));
    this.#counts[m * LatencyHistogram.SUB + sub]! += 1;
    this.#n += 1;
  }

  get count(): number {
    return this.#n;
  }

  /** The counts as plain data, to send over IPC (bench/raft-node.ts runs its share of a load in each node). */
  toData(): HistogramData {
    return { counts: [...this.#counts], maxUs: this.#maxUs };
  }

  /** Add another histogram's counts (same bucket layout): the latencies of loads run in several processes. */
  add(data: HistogramData): void {
    if (data.counts.length !== this.#counts.length) {
      throw new RangeError(`histogram of ${data.counts.length} buckets, expected ${this.#counts.length}`);
    }
    for (let i = 0; i < this.#counts.length; i++) {
      this.#counts[i]! += data.counts[i]!;
      this.#n += data.counts[i]!;
    }
    this.#maxUs = Math.max(this.#maxUs, data.maxUs);
  }

  get maxMs(): number {
    return this.#maxUs / 1000;
  }

  /** The q-quantile (0..1) in ms: the middle of the bucket holding it; NaN when empty. */
  quantileMs(q: number): number {
    if (this.#n === 0) return Number.NaN;
    const rank = Math.min(this.#n, Math.max(1, Math.ceil(q * this.#n)));
    let seen = 0;
    for (let i = 0; i < this.#counts.length; i++) {
      seen += this.#counts[i]!;
      if (seen >= rank) {
        const m = Math.floor(i / LatencyHistogram.SUB);
        const sub = i % LatencyHistogram.SUB;
        const base = 2 ** m;
        const width = base / LatencyHistogram.SUB;
        // Never above the largest value seen (the top bucket's middle could be).
        return Math.min(this.#maxUs, base + (sub + 0.5) * width) / 1000;
      }
    }
    return this.maxMs;
  }
}

function keyName(prefix: string, i: number): string {
  return `${prefix}${String(i).padStart(5, '0')}`;
}

/** Run the closed loop; resolves after the measured window, once every put still in flight has settled. */
export async function runLoad(options: LoadOptions): Promise<LoadResult> {
  return (await runLoadPart(options)).result;
}

/**
 * Merge the shares of one load run at the same time in several processes (each over the same window): ops add up,
 * quantiles come from the summed histograms. Client CPU is NaN: each share measured its whole process, which for
 * an embedded library is also the server (the caller reports the processes' CPU instead).
 */
export function mergeLoads(parts: readonly LoadPart[], inFlight: number, durationMs: number): LoadResult {
  const hist = new LatencyHistogram();
  let errors = 0;
  let firstError: string | undefined;
  for (const p of parts) {
    hist.add(p.histogram);
    errors += p.result.errors;
    firstError ??= p.result.firstError;
  }
  return summary(hist, inFlight, durationMs, errors, firstError, Number.NaN);
}

function summary(
  hist: LatencyHistogram,
  inFlight: number,
  durationMs: number,
  errors: number,
  firstError: string | undefined,
  cpuUs: number,
): LoadResult {
  const seconds = durationMs / 1000;
  return {
    inFlight,
    ops: hist.count,
    errors,
    ...(firstError === undefined ? {} : { firstError }),
    seconds: round(seconds, 3),
    opsPerSecond: Math.round(hist.count / seconds),
    p50Ms: round(hist.quantileMs(0.5), 3),
    p99Ms: round(hist.quantileMs(0.99), 3),
    maxMs: round(hist.maxMs, 3),
    clientCpuUsPerOp: hist.count === 0 ? Number.NaN : round(cpuUs / hist.count, 1),
  };
}

/** runLoad, also returning the latency histogram (for mergeLoads). */
export async function runLoadPart(options: LoadOptions): Promise<LoadPart> {
  const { put, inFlight, durationMs, warmupMs, seed } = options;
  const keys = options.keys ?? DEFAULT_KEYS;
  const valueBytes = options.valueBytes ?? DEFAULT_VALUE_BYTES;
  const prefix = options.prefix ?? 'bench/k';
  if (!Number.isInteger(inFlight) || inFlight < 1) throw new RangeError(`inFlight must be an integer ≥ 1: ${inFlight}`);
  if (!(durationMs > 0)) throw new RangeError(`durationMs must be > 0: ${durationMs}`);
  const rng = new Random(seed);
  // One draw per put from one generator: the key sequence depends on the seed only, not on timing (which loop
  // takes the next key varies, the sequence of keys written does not).
  const nextKey = (): string => keyName(prefix, Math.floor(rng.next() * keys));
  const nextValue = (): Uint8Array => {
    const v = new Uint8Array(valueBytes);
    for (let i = 0; i < valueBytes; i += 4) {
      const x = Math.floor(rng.next() * 4294967296);
      for (let j = 0; j < 4 && i + j < valueBytes; j++) v[i + j] = (x >>> (8 * j)) & 0xff;
    }
    return v;
  };

  const hist = new LatencyHistogram();
  let errors = 0;
  let firstError: string | undefined;
  const t0 = performance.now();
  const measureFrom = t0 + Math.max(0, warmupMs);
  const measureUntil = measureFrom + durationMs;

  // CPU of the client over the measured window (sampled by timers at its edges; the process does nothing else).
  let cpuFrom: NodeJS.CpuUsage | undefined;
  let cpuUsed: NodeJS.CpuUsage | undefined;
  const fromTimer = setTimeout(() => (cpuFrom = process.cpuUsage()), Math.max(0, warmupMs));
  const untilTimer = setTimeout(() => (cpuUsed = process.cpuUsage(cpuFrom)), Math.max(0, warmupMs) + durationMs);

  const loop = async (): Promise<void> => {
    while (performance.now() < measureUntil) {
      const key = nextKey();
      const value = nextValue();
      const start = performance.now();
      let failed: unknown;
      try {
        await put(key, value);
      } catch (err) {
        failed = err ?? new Error('put failed');
      }
      const end = performance.now();
      // Count what completed inside the window (a put straddling its start or end is not counted).
      const counted = start >= measureFrom && end <= measureUntil;
      if (failed === undefined) {
        if (counted) hist.recordMs(end - start);
        continue;
      }
      if (counted) errors++;
      firstError ??= failed instanceof Error ? failed.message : String(failed);
      // A target that fails at once (connection refused) would otherwise be spun at full speed.
      await new Promise((r) => setTimeout(r, ERROR_PAUSE_MS));
    }
  };
  try {
    await Promise.all(Array.from({ length: inFlight }, loop));
  } finally {
    clearTimeout(fromTimer);
    clearTimeout(untilTimer);
  }
  // The loops may all end a moment before the timer at the window's end fires.
  if (cpuFrom !== undefined) cpuUsed ??= process.cpuUsage(cpuFrom);
  const cpuUs = cpuUsed === undefined ? Number.NaN : cpuUsed.user + cpuUsed.system;

  return {
    result: summary(hist, inFlight, durationMs, errors, firstError, cpuUs),
    histogram: hist.toData(),
  };
}
