/**
 * Repairing a group whose keys hold data Rebalancer cannot read (`rebalancer groups repair`). It lists what
 * groupStatus reports as unreadable and, when asked, deletes exactly those keys of the group — each one guarded by
 * the mod revision it was read at, so a key rewritten meanwhile is kept. Deleting is safe for every record but a
 * lock: the coordinator rewrites the state and the grants, members register again, acknowledgements are rewritten.
 * A lock (`held/`) is deleted only when no session holds it: a lock of a live session may guard a running handler,
 * and goes by itself with its session.
 */
import { CorruptDataError } from '../../errors.js';
import { GroupKeys } from '../../protocol/groups/keys.js';
import type { Store } from '../../store/contract.js';
import { groupStatus, type CorruptionProblem } from './status.js';

export interface RepairStep extends CorruptionProblem {
  /** `deleted`; `would-delete` (without `delete`); `kept` (see `why`); `gone` (no longer there). */
  readonly action: 'deleted' | 'would-delete' | 'kept' | 'gone';
  readonly why?: string | undefined;
}

/** List (and with `delete`, delete) the unreadable keys of a group. */
export async function repairGroup(store: Store, group: string, options: { delete: boolean }): Promise<RepairStep[]> {
  const keys = new GroupKeys(group);
  const status = await groupStatus(store, group);
  const steps: RepairStep[] = [];
  for (const p of status.problems) {
    if (!p.key.startsWith(keys.root)) {
      steps.push({ ...p, action: 'kept', why: 'not a key of the group: repair it as the problem says' });
      continue;
    }
    let kv;
    try {
      kv = await store.get(p.key);
    } catch (error) {
      // The store itself cannot read the key (e.g. a Redis record of the wrong type): its message says what to do.
      if (!(error instanceof CorruptDataError)) throw error;
      steps.push({ ...p, action: 'kept', why: error.message });
      continue;
    }
    if (kv === undefined) {
      steps.push({ ...p, action: 'gone' });
      continue;
    }
    if (p.key.startsWith(keys.held) && kv.sessionId !== undefined) {
      steps.push({ ...p, action: 'kept', why: `held by session ${kv.sessionId}: it goes when that session ends` });
      continue;
    }
    if (!options.delete) {
      steps.push({ ...p, action: 'would-delete' });
      continue;
    }
    const r = await store.txn({
      compare: [{ key: p.key, target: 'modRevision', op: '=', value: kv.modRevision }],
      then: [{ op: 'delete', key: p.key }],
    });
    steps.push(
      r.succeeded ? { ...p, action: 'deleted' } : { ...p, action: 'kept', why: 'it changed while being repaired' },
    );
  }
  return steps;
}
