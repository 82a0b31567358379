/**
 * The client clock's rate against the store server's clock (issue 12 item 5).
 *
 * Safety of every lease assumes the two clocks' rates differ by at most `maxClockDriftRate` (the same constant that
 * shrinks `safeUntilMs` and stretches the delayed restart after data loss). A client clock that runs slow (a VM
 * being starved, libfaketime, a broken TSC) makes a holder trust its lease after the server has expired it. Where
 * the server tells its time (Redis TIME, PostgreSQL clock_timestamp(), the simulator's server clock), each keep-alive
 * gives a sample: the server's time, read somewhere between the request's send and its reply on the local clock.
 *
 * Pure: samples in, a verdict out; no clock, no timers. The verdict allows for the round trip (the server's reading
 * lies anywhere between send and reply), so jitter never raises an alarm, however large: it only widens the
 * interval. A rate is out of bounds only if it is out over the whole window AND over each of its two halves, in the
 * same direction: a single step of the server's wall clock (NTP) lies in one half only. A server clock that went
 * backwards restarts the window.
 */

/** One reading of the server's clock. */
export interface ServerClockSample {
  /** Local monotonic clock when the request was sent. */
  readonly sentAtMs: number;
  /** Local monotonic clock when its reply arrived. */
  readonly receivedAtMs: number;
  /** The server's clock (wall-clock milliseconds) as it processed the request. */
  readonly serverMs: number;
}

export type ClockRateVerdict =
  /** Not enough span yet to tell. */
  | { readonly kind: 'unknown' }
  /** Within the bound, or not provably out of it. */
  | { readonly kind: 'ok'; readonly low: number; readonly high: number }
  /** Provably out of the bound: the local clock ran `low`–`high` times as fast as the server's. */
  | { readonly kind: 'out'; readonly low: number; readonly high: number };

/** Servers report whole milliseconds: each reading may be up to this much early. */
const SERVER_RESOLUTION_MS = 1;

/** The local clock's rate relative to the server's between two samples, as an interval [low, high]. */
export function rateBetween(a: ServerClockSample, b: ServerClockSample): { low: number; high: number } | undefined {
  const serverMs = b.serverMs - a.serverMs;
  if (!(serverMs > SERVER_RESOLUTION_MS)) return undefined;
  const shortest = Math.max(0, b.sentAtMs - a.receivedAtMs);
  const longest = b.receivedAtMs - a.sentAtMs;
  return { low: shortest / (serverMs + SERVER_RESOLUTION_MS), high: longest / (serverMs - SERVER_RESOLUTION_MS) };
}

function side(r: { low: number; high: number }, maxDriftRate: number): 'slow' | 'fast' | 'ok' {
  if (r.high < 1 - maxDriftRate) return 'slow';
  if (r.low > 1 + maxDriftRate) return 'fast';
  return 'ok';
}

/**
 * A sliding window of samples. A verdict looks back from the newest sample over spans of `minSpanMs`, twice that, four
 * times… up to the oldest sample kept (`MAX_SPANS` × `minSpanMs`): the short span catches a clock gone badly wrong
 * quickly (its old, good samples do not dilute it), the long ones catch a small error that only shows over time.
 */
export class ClockRateEstimator {
  readonly #samples: ServerClockSample[] = [];
  readonly #maxDriftRate: number;

  constructor(maxDriftRate: number) {
    this.#maxDriftRate = maxDriftRate;
  }

  get size(): number {
    return this.#samples.length;
  }

  /** Forget everything (e.g. after the verdict was acted on). */
  reset(): void {
    this.#samples.length = 0;
  }

  add(sample: ServerClockSample, minSpanMs: number): void {
    const last = this.#samples.at(-1);
    if (last !== undefined && (sample.serverMs <= last.serverMs || sample.sentAtMs < last.sentAtMs)) {
      // The server's clock stepped back (or a stale reply): nothing before is comparable any more.
      this.#samples.length = 0;
    }
    this.#samples.push(sample);
    // Keep the newest sample at least MAX_SPANS × minSpanMs old, and everything after it.
    const horizon = sample.receivedAtMs - MAX_SPANS * minSpanMs;
    while (this.#samples.length > 2 && this.#samples[1]!.receivedAtMs <= horizon) this.#samples.shift();
  }

  /** The verdict: `out` if any span (see the class comment) is provably out of the bound, else `ok` or `unknown`. */
  verdict(minSpanMs: number): ClockRateVerdict {
    const s = this.#samples;
    let best: ClockRateVerdict = { kind: 'unknown' };
    for (let span = minSpanMs; span <= MAX_SPANS * minSpanMs; span *= 2) {
      const v = this.#verdictOver(span);
      if (v.kind === 'out') return v;
      if (v.kind === 'ok') best = v;
      else break; // not enough samples for this span: none for the longer ones either
      if (s[0]!.receivedAtMs > s.at(-1)!.sentAtMs - 2 * span) break; // the longest span available was just used
    }
    return best;
  }

  /** Over the newest samples spanning at least `spanMs` (or all of them, if they span less than twice that). */
  #verdictOver(spanMs: number): ClockRateVerdict {
    const s = this.#samples;
    const last = s.at(-1);
    if (last === undefined) return { kind: 'unknown' };
    // The newest sample at least spanMs before the last one: the window's start.
    let i = -1;
    for (let k = s.length - 2; k >= 0; k--) {
      if (last.sentAtMs - s[k]!.receivedAtMs >= spanMs) {
        i = k;
        break;
      }
    }
    if (i < 0) return { kind: 'unknown' };
    const first = s[i]!;
    const whole = rateBetween(first, last);
    if (whole === undefined) return { kind: 'unknown' };
    const verdict = side(whole, this.#maxDriftRate);
    if (verdict === 'ok') return { kind: 'ok', ...whole };
    // The sample nearest the middle splits the window in two; both halves must say the same.
    const midAt = (first.receivedAtMs + last.sentAtMs) / 2;
    let mid = i + 1;
    for (let k = i + 1; k < s.length - 1; k++) {
      if (Math.abs(s[k]!.receivedAtMs - midAt) < Math.abs(s[mid]!.receivedAtMs - midAt)) mid = k;
    }
    // Out over the whole, but no sample in between to check both halves with: not yet decided either way.
    if (mid >= s.length - 1) return { kind: 'unknown' };
    const a = rateBetween(first, s[mid]!);
    const b = rateBetween(s[mid]!, last);
    if (a === undefined || b === undefined) return { kind: 'unknown' };
    if (side(a, this.#maxDriftRate) === verdict && side(b, this.#maxDriftRate) === verdict) {
      return { kind: 'out', ...whole };
    }
    return { kind: 'ok', ...whole };
  }
}

/** The longest span a verdict looks at, in `minSpanMs`. */
const MAX_SPANS = 8;
