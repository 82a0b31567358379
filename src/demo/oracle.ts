/**
 * The demo's ownership oracle, outside the library: it trusts nothing the
 * library says, only what the workers' handlers did. Every handler appends
 * JSON lines to one shared file (O_APPEND, one small write per line), so the
 * file's order is the real-time order of the writes across processes; the
 * demo appends a `killed` line right after it SIGKILLs a worker (that worker
 * can write nothing later).
 *
 * Checked, per resource, in file order:
 *  - overlap: an owner starts while another owner's run has not ended (no
 *    `stop` line yet and its worker was not killed);
 *  - late effect: a side effect logged by a run that has ended, or after a
 *    newer owner (higher fencing token) has started;
 *  - token order: each new owner's fencing token is higher than every earlier one.
 */

export type OracleEvent = 'start' | 'effect' | 'stop' | 'killed';

export interface OracleLine {
  readonly node: string;
  /** Absent on `killed` lines. */
  readonly resource?: string;
  readonly token?: number;
  readonly event: OracleEvent;
  /** Wall-clock milliseconds (same machine for all writers). */
  readonly t: number;
}

export interface OracleViolation {
  readonly kind: 'overlap' | 'late-effect' | 'token-order';
  readonly resource: string;
  readonly detail: string;
}

export interface OracleReport {
  readonly violations: readonly OracleViolation[];
  /** Runs started (one per owner per resource). */
  readonly starts: number;
  readonly effects: number;
  /** Starts on a different node than the resource's previous owner. */
  readonly moves: number;
  /** resource → the start lines, in order. */
  readonly startsByResource: ReadonlyMap<string, readonly OracleLine[]>;
}

export function parseOracle(text: string): OracleLine[] {
  const out: OracleLine[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    // A torn last line (a worker killed mid-write) is not evidence of anything.
    try {
      out.push(JSON.parse(line) as OracleLine);
    } catch {
      continue;
    }
  }
  return out;
}

export function checkOracle(lines: readonly OracleLine[]): OracleReport {
  const violations: OracleViolation[] = [];
  /** resource → token → node of runs that have not ended. */
  const open = new Map<string, Map<number, string>>();
  const maxToken = new Map<string, number>();
  const lastNode = new Map<string, string>();
  const startsByResource = new Map<string, OracleLine[]>();
  let starts = 0;
  let effects = 0;
  let moves = 0;
  /** One late-effect report per run is enough (a run that goes on acting would otherwise flood the list). */
  const reportedLate = new Set<string>();
  for (const l of lines) {
    if (l.event === 'killed') {
      for (const runs of open.values()) for (const [tok, node] of runs) if (node === l.node) runs.delete(tok);
      continue;
    }
    const r = l.resource;
    const token = l.token;
    if (r === undefined || token === undefined) continue;
    const runs = open.get(r) ?? new Map<number, string>();
    open.set(r, runs);
    if (l.event === 'start') {
      starts++;
      for (const [tok, node] of runs) {
        violations.push({
          kind: 'overlap',
          resource: r,
          detail: `${l.node} started it (token ${token}) while ${node} (token ${tok}) was still running it`,
        });
      }
      const max = maxToken.get(r);
      if (max !== undefined && token <= max) {
        violations.push({
          kind: 'token-order',
          resource: r,
          detail: `${l.node} started it with token ${token}, not above the earlier ${max}`,
        });
      }
      maxToken.set(r, Math.max(max ?? token, token));
      const prev = lastNode.get(r);
      if (prev !== undefined && prev !== l.node) moves++;
      lastNode.set(r, l.node);
      runs.set(token, l.node);
      const list = startsByResource.get(r) ?? [];
      list.push(l);
      startsByResource.set(r, list);
    } else if (l.event === 'effect') {
      effects++;
      const newest = maxToken.get(r);
      const runKey = `${r}\u0000${token}`;
      if (reportedLate.has(runKey)) continue;
      if (!runs.has(token) || (newest !== undefined && newest > token)) reportedLate.add(runKey);
      if (!runs.has(token)) {
        violations.push({
          kind: 'late-effect',
          resource: r,
          detail: `${l.node} (token ${token}) acted after its run had ended`,
        });
      } else if (newest !== undefined && newest > token) {
        violations.push({
          kind: 'late-effect',
          resource: r,
          detail: `${l.node} (token ${token}) acted after a newer owner (token ${newest}) had started`,
        });
      }
    } else if (l.event === 'stop') {
      runs.delete(token);
    }
  }
  return { violations, starts, effects, moves, startsByResource };
}
