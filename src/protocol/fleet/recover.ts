/**
 * The explicit, unsafe recovery of a fleet group that lost its majority (docs/fleet.md, "A group that lost its majority"). Nothing in the
 * fleet ever does this by itself: a group whose voters are mostly gone waits for them (status `majority-lost`,
 * event `stuck`). Only an operator who accepts losing what the lost voters may have committed calls this.
 *
 * What it writes, in one transaction: the group's record under a NEW generation (from the fleet's counter, like an
 * add) carrying `seed: { node: from, generation: old, initial }`, and the removal of the old generation's desired and
 * observed records. So:
 * - every replica of the old generation is dropped by its node as `group-removed` (on the survivors at once, on the
 *   dead nodes when they come back): an old majority that returns can never elect a leader again;
 * - the coordinator writes the new generation's first desired record with `initial = [from]` and members `[from]`;
 * - node `from` bootstraps the new generation alone from its old replica's applied state (RaftNode.seedGroup), then
 *   drops the old replica; once the new group reports a leader, the coordinator places it as usual and the other
 *   replicas join and get the state through Raft (snapshot).
 *
 * Entries the lost majority committed that `from` had not applied are lost for good; so are the client sessions
 * (commands in flight during the loss may be applied twice if a client retries them on the new group).
 */
import { CorruptDataError, FleetGroupNotFoundError, FleetRecoveryRefusedError } from '../../errors.js';
import type { Store } from '../../store/contract.js';
import { readFleetView, type FleetGroupView } from './io.js';
import {
  encodeRecord,
  FleetKeys,
  newIncarnation,
  newRaftIdTag,
  validateNodeId,
  withControlId,
  withIssued,
  type GroupRecord,
  type MetaRecord,
} from './keys.js';
import { quorum } from './plan.js';

export interface RecoverGroupOptions {
  /** The live node whose replica of the group becomes the whole group (its applied state is kept). */
  readonly from: string;
  /** Must be `true`: the caller accepts that entries the lost voters committed may be lost for good. */
  readonly unsafe: true;
  /** Recover even though the group has not (as far as the records say) lost its majority. */
  readonly force?: boolean;
}

export interface RecoverGroupResult {
  /** The group's record as written: the new generation, with its seed. */
  readonly group: GroupRecord;
  /** The generation that was abandoned. */
  readonly previousGeneration: number;
  /** The old voters that were not live (their replicas will be dropped when they come back). */
  readonly lostVoters: readonly string[];
  /** What may have been lost, for the operator: print it. */
  readonly warning: string;
}

/** Re-reads when the group or the fleet's counters changed between the read and the write. */
const MAX_ATTEMPTS = 10;

/**
 * Recover group `name` of fleet `fleet` (its name, or its keys) from node `from`'s replica (see the module comment). Refused, with nothing written, by
 * FleetRecoveryRefusedError when `unsafe` is not `true`, when the group has not lost its majority (unless
 * `force`), when `from` is not a live node or (per the records) holds no replica of the group's current
 * generation; FleetGroupNotFoundError when there is no such group; CorruptDataError when the group's record or the
 * fleet's counters cannot be read.
 */
export async function recoverGroup(
  store: Store,
  fleet: string | FleetKeys,
  name: string,
  options: RecoverGroupOptions,
): Promise<RecoverGroupResult> {
  const keys = typeof fleet === 'string' ? new FleetKeys(fleet) : fleet;
  const groupKey = keys.group(name);
  if (options?.unsafe !== true) {
    throw new FleetRecoveryRefusedError(
      name,
      'not-unsafe',
      `recovering group ${name} keeps only one replica's state: entries the lost voters committed may be lost for ` +
        'good. Say that you accept it with `unsafe: true` (the CLI: --unsafe); read docs/fleet.md, "A group that lost its majority" first',
    );
  }
  const from = validateNodeId(options.from);
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const view = await readFleetView(store, keys, () => undefined);
    if (view.unreadable.includes(groupKey)) {
      throw new CorruptDataError(`${groupKey} cannot be read, so group ${name} is not recovered; repair it first`, {
        key: groupKey,
      });
    }
    if (view.unreadable.includes(keys.meta)) {
      throw new CorruptDataError(`${keys.meta} cannot be read, so no generation can be handed out; repair it first`, {
        key: keys.meta,
      });
    }
    const g = view.groups.get(name);
    if (g === undefined) throw new FleetGroupNotFoundError(name, keys.fleet);
    const o = g.observed;
    const holders = o !== undefined ? [...o.voters, ...o.learners] : (g.desired?.members ?? []);
    if (!holders.includes(from)) {
      throw new FleetRecoveryRefusedError(
        name,
        'no-replica',
        `node ${from} holds no replica of group ${name} (generation ${g.generation}) as far as the fleet's records ` +
          `say; its members are ${holders.length === 0 ? 'unknown (never reported)' : holders.join(', ')}. Recover ` +
          'it from one of them (the one that was least behind: see `rebalancer fleet status`)',
      );
    }
    if (!view.nodes.has(from)) {
      throw new FleetRecoveryRefusedError(
        name,
        'node-not-live',
        `node ${from} is not live in fleet ${keys.fleet}: start it (with its data directory) first, then recover ` +
          `group ${name} from it`,
      );
    }
    const voters = o?.voters ?? [];
    const liveVoters = voters.filter((v) => view.nodes.has(v));
    const lost = o !== undefined && liveVoters.length < quorum(voters.length);
    if (!lost && options.force !== true) {
      throw new FleetRecoveryRefusedError(
        name,
        'majority-not-lost',
        o === undefined
          ? `group ${name} has no leader report, so whether it lost its majority is unknown; recovering is refused. ` +
              'Add --force (force: true) only if you know its majority is gone for good'
          : `group ${name} has not lost its majority (${liveVoters.length} of its ${voters.length} voters are live: ` +
              `${liveVoters.join(', ')}); it recovers by itself. Recovering anyway (--force, force: true) throws ` +
              'away what the others have',
      );
    }
    // No counters (a fleet older than them): the group's own generation is the highest known.
    const meta = view.meta ?? { lastGeneration: g.generation, groups: view.groups.size };
    const written = await write(store, keys, g, meta, view.metaRevision, from);
    if (written === undefined) continue;
    const lostVoters = voters.filter((v) => !view.nodes.has(v));
    const behind = o?.lag[from];
    return {
      group: written,
      previousGeneration: g.generation,
      lostVoters,
      warning:
        `UNSAFE: group ${name} now starts again (generation ${written.generation}) from the state node ${from}'s ` +
        `replica had applied. Entries the group committed that ${from} had not applied are lost for good` +
        (behind === undefined ? '' : ` (it was ${behind} entries behind the leader at the last report)`) +
        '; client sessions start afresh (a command retried across the recovery may apply twice). ' +
        (lostVoters.length > 0
          ? `The replicas on ${lostVoters.join(', ')} are dropped when those nodes come back.`
          : 'Every other replica of the old generation is dropped.'),
    };
  }
  throw new FleetRecoveryRefusedError(
    name,
    'changed',
    `group ${name} or the fleet's groups kept changing while recovering it (${MAX_ATTEMPTS} tries); nothing was ` +
      'written. Try again',
  );
}

/** The write itself; undefined when the group or the counters changed since read (read again). */
async function write(
  store: Store,
  keys: FleetKeys,
  g: FleetGroupView,
  meta: MetaRecord,
  metaRevision: number,
  from: string,
): Promise<GroupRecord | undefined> {
  const generation = meta.lastGeneration + 1;
  const group: GroupRecord = {
    name: g.name,
    replicas: g.replicas,
    machine: g.machine,
    generation,
    // Another group than the old generation's (its replicas start from a seed, not from the old group's log).
    incarnation: newIncarnation(),
    tag: newRaftIdTag(),
    seed: {
      node: from,
      generation: g.generation,
      ...(g.tag !== undefined ? { tag: g.tag } : {}),
      // The old generation's founders: the seed node's old replica, if only stored, is recovered with them.
      initial: g.desired?.initial ?? g.observed?.voters ?? [from],
    },
  };
  const r = await store.txn({
    compare: [
      { key: keys.group(g.name), target: 'modRevision', op: '=', value: g.revision },
      { key: keys.meta, target: 'modRevision', op: '=', value: metaRevision },
    ],
    then: [
      { op: 'put', key: keys.group(g.name), value: encodeRecord(group) },
      {
        op: 'put',
        key: keys.meta,
        value: encodeRecord({
          ...withControlId(meta),
          lastGeneration: generation,
          issued: withIssued(meta, generation),
        }),
      },
      { op: 'delete', key: keys.desiredOf(g.name) },
      { op: 'delete', key: keys.observedOf(g.name) },
    ],
  });
  return r.succeeded ? group : undefined;
}
