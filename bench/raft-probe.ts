/**
 * The failover probe of `npm run bench -- raft`, shared by the etcd load worker (bench/raft-worker.ts) and the
 * Rebalancer node processes (bench/raft-node.ts): the same yardstick for both.
 */
import type { FailoverRequest, FailoverResult } from './raft-protocol.js';

/** One bounded write: resolves when the target acknowledged it, rejects after `timeoutMs`. */
export type ProbePut = (key: string, value: Uint8Array, timeoutMs: number) => Promise<void>;

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Start a put every intervalMs (each bounded by callTimeoutMs, several may overlap) until one succeeds: the
 * recovery time is then known to within intervalMs, however long a failing attempt takes to fail.
 */
export async function probeUntilRecovered(put: ProbePut, req: FailoverRequest): Promise<FailoverResult> {
  const value = new Uint8Array(16);
  let attempts = 0;
  let failures = 0;
  let firstFailure: string | undefined;
  let recovered: number | undefined;
  const pending = new Set<Promise<void>>();
  while (recovered === undefined && Date.now() - req.sinceEpochMs < req.maxMs) {
    const n = attempts++;
    const p = put(`bench/failover/${n % 100}`, value, req.callTimeoutMs).then(
      () => {
        recovered ??= Date.now();
      },
      (err: unknown) => {
        failures++;
        firstFailure ??= message(err);
      },
    );
    pending.add(p);
    void p.finally(() => pending.delete(p));
    await sleep(req.intervalMs);
  }
  // Let the stragglers settle (each is bounded by callTimeoutMs), so that none outlives this probe.
  await Promise.all(pending);
  if (recovered === undefined) {
    throw new Error(
      `no put succeeded within ${req.maxMs} ms of the kill (${attempts} attempts; first failure: ${firstFailure})`,
    );
  }
  return {
    recoveredEpochMs: recovered,
    ms: recovered - req.sinceEpochMs,
    attempts,
    failures,
    ...(firstFailure === undefined ? {} : { firstFailure }),
  };
}
