/**
 * Commands a conformance "client process" understands. The same handler runs
 * inside a real child process (child.ts, for SIGSTOP / SIGKILL tests) and
 * in-process (the memory backend), so the suite drives both the same way.
 */
import { Election, type Leadership } from '../../src/store/election.js';
import type { Session, Store } from '../../src/store/contract.js';
import { RebalancerError } from '../../src/errors.js';
import { sleep } from '../harness/wait.js';

export type ClientCommand =
  | { cmd: 'open'; ttlMs: number }
  | { cmd: 'put'; key: string; value: string; attach: boolean }
  | { cmd: 'sessionState' }
  | { cmd: 'campaign'; prefix: string; value: string }
  | { cmd: 'guardedWrite'; key: string; value: string }
  | {
      cmd: 'electionLoop';
      prefix: string;
      logKey: string;
      name: string;
      ttlMs: number;
      durationMs: number;
      writesPerTerm: number;
    }
  | { cmd: 'close' };

export type ClientReply =
  | { ok: true; sessionId?: string; state?: string; token?: number; succeeded?: boolean; stats?: LoopStats }
  | { ok: false; code: string; message: string };

export interface LoopStats {
  terms: number;
  writesOk: number;
  writesRefused: number;
  errors: number;
}

interface ClientState {
  session?: Session;
  leadership?: Leadership;
}

function errorReply(err: unknown): ClientReply {
  if (err instanceof RebalancerError) return { ok: false, code: err.code, message: err.message };
  return { ok: false, code: 'ERROR', message: err instanceof Error ? err.message : String(err) };
}

/** Append `entry` to the comma-separated log at `logKey`, guarded by leadership. */
export async function guardedAppend(
  store: Store,
  leadership: Leadership,
  logKey: string,
  entry: string,
): Promise<boolean> {
  const cur = await store.get(logKey);
  const r = await store.txn({
    compare: [
      leadership.guard,
      cur === undefined
        ? { key: logKey, target: 'exists', exists: false }
        : { key: logKey, target: 'modRevision', op: '=', value: cur.modRevision },
    ],
    then: [{ op: 'put', key: logKey, value: cur === undefined || cur.value === '' ? entry : `${cur.value},${entry}` }],
  });
  return r.succeeded;
}

export function createCommandHandler(store: Store): (c: ClientCommand) => Promise<ClientReply> {
  const state: ClientState = {};
  return async (c) => {
    try {
      switch (c.cmd) {
        case 'open': {
          state.session = await store.openSession({ ttlMs: c.ttlMs });
          return { ok: true, sessionId: state.session.id };
        }
        case 'put': {
          const r = await store.txn({
            compare: [],
            then: [{ op: 'put', key: c.key, value: c.value, session: c.attach ? state.session : undefined }],
          });
          return { ok: true, succeeded: r.succeeded };
        }
        case 'sessionState':
          return { ok: true, state: state.session?.state ?? 'none' };
        case 'campaign': {
          if (state.session === undefined) throw new Error('open first');
          const election = new Election(store, { prefix: c.prefix });
          state.leadership = await election.campaign(state.session, c.value);
          return { ok: true, token: state.leadership.token };
        }
        case 'guardedWrite': {
          // Deliberately ignores what this process believes about its session:
          // the point is that the STORE refuses a stale leader.
          if (state.leadership === undefined) throw new Error('campaign first');
          const r = await store.txn({
            compare: [state.leadership.guard],
            then: [{ op: 'put', key: c.key, value: c.value }],
          });
          return { ok: true, succeeded: r.succeeded };
        }
        case 'electionLoop':
          return { ok: true, stats: await electionLoop(store, c) };
        case 'close':
          await store.close();
          return { ok: true };
      }
    } catch (err) {
      return errorReply(err);
    }
  };
}

/**
 * Campaign, act as leader with guarded appends to a shared log, repeat until
 * the deadline. Leaders append `token` entries; the suite then checks the log
 * never shows a lower token after a higher one (two leaders acting).
 */
async function electionLoop(store: Store, c: Extract<ClientCommand, { cmd: 'electionLoop' }>): Promise<LoopStats> {
  const stats: LoopStats = { terms: 0, writesOk: 0, writesRefused: 0, errors: 0 };
  const deadline = Date.now() + c.durationMs;
  const election = new Election(store, { prefix: c.prefix });
  let session: Session | undefined;
  while (Date.now() < deadline) {
    try {
      if (session === undefined || session.state === 'expired' || session.state === 'closed') {
        session = await store.openSession({ ttlMs: c.ttlMs });
      }
      const abort = AbortSignal.timeout(Math.max(1, deadline - Date.now()));
      const leadership = await election.campaign(session, c.name, abort);
      stats.terms++;
      for (let i = 0; i < c.writesPerTerm && Date.now() < deadline; i++) {
        // Deliberately no check of the local session state: the store must refuse stale leaders.
        if (await guardedAppend(store, leadership, c.logKey, String(leadership.token))) stats.writesOk++;
        else stats.writesRefused++;
        await sleep(Math.random() * 60);
      }
      await leadership.resign().catch(() => undefined);
      await sleep(Math.random() * 50);
    } catch {
      if (Date.now() >= deadline) break;
      stats.errors++;
      await sleep(50); // never spin: a failing store may fail instantly
    }
  }
  return stats;
}
