/**
 * A group's status as the store holds it: who is a member, who coordinates,
 * and for each resource who is meant to run it (grant) and who holds its lock
 * (owner, with the fencing token). Read in one transaction, so it is one
 * consistent snapshot on every backend. For operators (`rebalancer status`),
 * dashboards and tests; it decides nothing.
 */
import { CorruptDataError, GroupNotFoundError } from '../../errors.js';
import { readGroupView } from '../../protocol/groups/io.js';
import { GroupKeys, type Protocol } from '../../protocol/groups/keys.js';
import type { Store } from '../../store/contract.js';
import { decodeIncarnation, INCARNATION_KEY } from '../../store/incarnation.js';

/**
 * - `active`: granted to a node that holds its lock (running there).
 * - `starting`: granted, lock free: the grantee is about to start it.
 * - `moving`: granted to one node while another still holds the lock (stop-before-start in progress).
 * - `stopping`: not granted to anyone (revoked, or a global barrier's stop phase) and still locked.
 * - `unassigned`: registered, not granted, not locked (no live member, or the coordinator has not placed it yet).
 * - `removing`: no longer registered, but its last owner still holds the lock.
 */
export type ResourceState = 'active' | 'starting' | 'moving' | 'stopping' | 'unassigned' | 'removing';

export interface ResourceStatus {
  readonly name: string;
  readonly state: ResourceState;
  /** The node holding the lock (running it, or still stopping it). */
  readonly owner?: string | undefined;
  /** The owner's fencing token (the lock's create revision). */
  readonly fencingToken?: number | undefined;
  /** The node the coordinator granted it to, when that is not (yet) the owner. */
  readonly assignedTo?: string | undefined;
}

export interface NodeStatus {
  readonly id: string;
  readonly zone: string;
  readonly weight: number;
  readonly static: boolean;
  readonly coordinator: boolean;
  /** Resources granted to this node. */
  readonly assigned: number;
  /** Resources whose lock this node holds. */
  readonly owned: number;
}

export interface GroupStatus {
  readonly group: string;
  /** Store revision of the snapshot. */
  readonly revision: number;
  readonly protocol: Protocol | undefined;
  readonly generation: number;
  readonly phase: 'running' | 'stopping' | undefined;
  readonly coordinator: { readonly nodeId: string; readonly token: number } | undefined;
  readonly nodes: readonly NodeStatus[];
  readonly resources: readonly ResourceStatus[];
  readonly counts: Readonly<Record<ResourceState, number>>;
  /** Resources in `starting`, `moving` or `stopping`. */
  readonly movesInFlight: number;
  /** Keys that could not be decoded (a problem to report; the rest of the status is still right). */
  readonly corruptKeys: readonly string[];
  /**
   * What is wrong with each of `corruptKeys` and how to repair it. While the group's state or a grant is listed here
   * the coordinator stops coordinating (it never overwrites what it could not read; members keep what they hold).
   */
  readonly problems: readonly CorruptionProblem[];
  /**
   * The namespace's data (see docs/adr/0009): `recovering` while it is new after the store lost its data and no
   * session is granted yet; `unknown` when no client has opened a session in it yet.
   */
  readonly data: 'ok' | 'recovering' | 'unknown';
}

export interface CorruptionProblem {
  readonly key: string;
  /** The error's message (what is wrong). */
  readonly problem: string;
  /** What to do about it. */
  readonly repair: string;
}

/** How to repair an unreadable key of group `group` (see `rebalancer groups repair`). */
export function repairAdvice(keys: GroupKeys, group: string, key: string): string {
  const cmd = `rebalancer groups repair --group ${group} --delete`;
  if (key === keys.state)
    return `delete it (${cmd}); the coordinator writes a new state and coordinates again — nothing else is lost`;
  if (key.startsWith(keys.grants)) return `delete it (${cmd}); the coordinator grants the resource again`;
  if (key.startsWith(keys.members)) return `delete it (${cmd}); a live member registers itself again when it rejoins`;
  if (key.startsWith(keys.held))
    return `if no live session holds it, delete it (${cmd} deletes only such locks); otherwise it goes with its session`;
  if (key.startsWith(keys.acks) || key.startsWith(keys.coordinator)) return `delete it (${cmd})`;
  return "see the problem above; the key is not one of the group's records";
}

const byName = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** Read one group's status (one transaction for the group, one read for the coordinator key). */
export async function groupStatus(store: Store, group: string): Promise<GroupStatus> {
  const keys = new GroupKeys(group);
  const corruptKeys: string[] = [];
  const problems: CorruptionProblem[] = [];
  const report = (e: CorruptDataError): void => {
    const key = e.key ?? '?';
    if (corruptKeys.includes(key)) return;
    corruptKeys.push(key);
    problems.push({ key, problem: e.message, repair: repairAdvice(keys, group, key) });
  };
  const [view, coordKvs, incarnation] = await Promise.all([
    readGroupView(store, keys, report),
    store.range(keys.coordinator),
    store.get(INCARNATION_KEY),
  ]);
  let data: GroupStatus['data'] = 'unknown';
  if (incarnation !== undefined) {
    try {
      data = decodeIncarnation(incarnation.value).state === 'young' ? 'recovering' : 'ok';
    } catch (cause) {
      report(
        new CorruptDataError(`${INCARNATION_KEY} is not the namespace's incarnation record`, {
          key: INCARNATION_KEY,
          cause,
        }),
      );
    }
  }
  // Nothing of the group, and nothing lost to explain it: a wrong name or namespace.
  const empty = view.members.size === 0 && view.resources.length === 0 && view.state === undefined;
  if (empty && view.locks.size === 0 && data !== 'recovering') throw new GroupNotFoundError(group, store.namespace);

  // The elected coordinator: the lowest create revision under coord/ (see store/election.ts).
  let coordinator: { nodeId: string; token: number } | undefined;
  const lowest = [...coordKvs.kvs].sort((a, b) => a.createRevision - b.createRevision)[0];
  if (lowest !== undefined) {
    let nodeId = '?';
    try {
      const v = JSON.parse(lowest.value) as { nodeId?: unknown };
      if (typeof v.nodeId === 'string') nodeId = v.nodeId;
      else report(new CorruptDataError(`${lowest.key}: field nodeId must be a string`, { key: lowest.key }));
    } catch (cause) {
      report(new CorruptDataError(`${lowest.key} does not hold valid JSON`, { key: lowest.key, cause }));
    }
    coordinator = { nodeId, token: lowest.createRevision };
  }

  const grantee = new Map<string, string>();
  for (const [name, nodes] of view.grants) if (nodes[0] !== undefined) grantee.set(name, nodes[0]);
  const registered = new Set(view.resources);
  const names = new Set<string>([...view.resources, ...view.locks.keys()]);
  const counts: Record<ResourceState, number> = {
    active: 0,
    starting: 0,
    moving: 0,
    stopping: 0,
    unassigned: 0,
    removing: 0,
  };
  const resources: ResourceStatus[] = [];
  for (const name of [...names].sort(byName)) {
    const lock = view.locks.get(name);
    const owner = lock === undefined ? undefined : (lock.nodeId ?? '?');
    const to = registered.has(name) ? grantee.get(name) : undefined;
    let state: ResourceState;
    if (!registered.has(name)) state = 'removing';
    else if (to === undefined) state = owner === undefined ? 'unassigned' : 'stopping';
    else if (owner === undefined) state = 'starting';
    else state = owner === to ? 'active' : 'moving';
    counts[state]++;
    resources.push({
      name,
      state,
      owner,
      fencingToken: lock?.token,
      assignedTo: to !== undefined && to !== owner ? to : undefined,
    });
  }

  const assigned = new Map<string, number>();
  for (const to of grantee.values()) assigned.set(to, (assigned.get(to) ?? 0) + 1);
  const owned = new Map<string, number>();
  for (const r of resources) if (r.owner !== undefined) owned.set(r.owner, (owned.get(r.owner) ?? 0) + 1);
  const nodes: NodeStatus[] = [...view.members.values()]
    .map((m) => ({
      id: m.nodeId,
      zone: m.zone,
      weight: m.weight,
      static: m.static,
      coordinator: coordinator?.nodeId === m.nodeId,
      assigned: assigned.get(m.nodeId) ?? 0,
      owned: owned.get(m.nodeId) ?? 0,
    }))
    .sort((a, b) => byName(a.id, b.id));

  return {
    group,
    revision: view.revision,
    protocol: view.state?.protocol,
    generation: view.state?.generation ?? 0,
    phase: view.state?.phase,
    coordinator,
    nodes,
    resources,
    counts,
    movesInFlight: counts.starting + counts.moving + counts.stopping + counts.removing,
    corruptKeys,
    problems,
    data,
  };
}
