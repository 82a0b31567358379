/**
 * The data the Raft core exchanges with its host: log entries, snapshots, the persistent hard state, membership
 * configurations, and the messages between replicas. Plain objects; entry payloads and snapshot bytes are
 * `Uint8Array` so that a transport can send them raw. Nothing here does IO.
 */
import { InvalidArgumentError } from '../errors.js';

/** A replica's identity inside one group. Stable across restarts (never a process id or an address). */
export type NodeId = string;

/** The replica ids that vote, and those that only receive the log (learners). Disjoint. */
export interface Membership {
  readonly voters: readonly NodeId[];
  readonly learners: readonly NodeId[];
}

/** One change of membership: exactly one replica changes role at a time. */
export type MembershipChange =
  | { readonly type: 'addVoter'; readonly node: NodeId }
  | { readonly type: 'addLearner'; readonly node: NodeId }
  | { readonly type: 'remove'; readonly node: NodeId };

export type EntryType = 'normal' | 'membership';

export interface Entry {
  readonly term: number;
  readonly index: number;
  readonly type: EntryType;
  /** The command (normal), or the encoded change and resulting membership (membership; see decodeMembershipEntry). */
  readonly data: Uint8Array;
}

/** What must be on disk before the host sends the messages that depend on it. */
export interface HardState {
  readonly term: number;
  /** Whom this replica voted for in `term` ('' when nobody). */
  readonly vote: NodeId;
  readonly commit: number;
}

export interface SnapshotMeta {
  /** The last index the snapshot covers, and that entry's term. */
  readonly index: number;
  readonly term: number;
  /** The membership in effect after applying every entry up to `index`. */
  readonly membership: Membership;
}

export interface Snapshot {
  readonly meta: SnapshotMeta;
  /** The state machine's bytes (opaque to the core). */
  readonly data: Uint8Array;
}

/** The answer to a ReadIndex request: once the state machine has applied `index`, a read for `ctx` is linearizable. */
export interface ReadState {
  readonly ctx: string;
  readonly index: number;
}

interface Base {
  readonly from: NodeId;
  readonly to: NodeId;
  /** The sender's term (a pre-vote request carries the term the sender would campaign in). */
  readonly term: number;
}

/** Leader → follower: entries after (index, logTerm), and the leader's commit index. */
export interface AppendMessage extends Base {
  readonly type: 'append';
  readonly index: number;
  readonly logTerm: number;
  readonly entries: readonly Entry[];
  readonly commit: number;
}

/**
 * Follower → leader. Accepted: `index` is the last index the follower now holds that matches the leader. Rejected:
 * `index` is the index of the rejected append and `hintIndex`/`hintTerm` the follower's guess at the last index
 * where the logs may agree (fast back-off).
 */
export interface AppendResponseMessage extends Base {
  readonly type: 'appendResponse';
  readonly index: number;
  readonly reject: boolean;
  readonly hintIndex: number;
  readonly hintTerm: number;
}

/** A (pre-)vote request: the candidate's last log position. `transfer`: campaigning on a leadership transfer. */
export interface VoteMessage extends Base {
  readonly type: 'vote' | 'preVote';
  readonly index: number;
  readonly logTerm: number;
  readonly transfer: boolean;
}

export interface VoteResponseMessage extends Base {
  readonly type: 'voteResponse' | 'preVoteResponse';
  readonly reject: boolean;
}

/**
 * Leader → follower: "I am still leader". `commit` is min(the follower's match, the leader's commit). `round`
 * identifies the broadcast (echoed back; ReadIndex and lease reads count the answers per round). `quiesce`: the
 * group is idle, stop the election timer until something happens.
 */
export interface HeartbeatMessage extends Base {
  readonly type: 'heartbeat';
  readonly commit: number;
  readonly round: number;
  readonly quiesce: boolean;
}

export interface HeartbeatResponseMessage extends Base {
  readonly type: 'heartbeatResponse';
  readonly round: number;
}

/** Leader → follower: one chunk of a snapshot; `offset` is where `data` starts in the snapshot's bytes. */
export interface SnapshotMessage extends Base {
  readonly type: 'snapshot';
  readonly meta: SnapshotMeta;
  readonly offset: number;
  readonly data: Uint8Array;
  /** The snapshot's total size in bytes: the chunk ending there is the last. */
  readonly totalBytes: number;
}

/** Follower → leader: the snapshot's bytes received so far (`offset`), or that the follower refuses it. */
export interface SnapshotResponseMessage extends Base {
  readonly type: 'snapshotResponse';
  readonly index: number;
  readonly offset: number;
  readonly reject: boolean;
}

/** Follower → leader: proposals made on a follower. */
export interface ProposeMessage extends Base {
  readonly type: 'propose';
  readonly entries: readonly { readonly type: EntryType; readonly data: Uint8Array }[];
}

/** Follower → leader: a ReadIndex request made on a follower; answered with readIndexResponse. */
export interface ReadIndexMessage extends Base {
  readonly type: 'readIndex';
  readonly ctx: string;
}

export interface ReadIndexResponseMessage extends Base {
  readonly type: 'readIndexResponse';
  readonly ctx: string;
  readonly index: number;
}

/** Leader → transfer target: campaign now, without waiting for the election timeout or a pre-vote. */
export interface TimeoutNowMessage extends Base {
  readonly type: 'timeoutNow';
}

/** Follower → leader: transferLeadership() called on a follower. */
export interface TransferMessage extends Base {
  readonly type: 'transfer';
  readonly target: NodeId;
}

export type Message =
  | AppendMessage
  | AppendResponseMessage
  | VoteMessage
  | VoteResponseMessage
  | HeartbeatMessage
  | HeartbeatResponseMessage
  | SnapshotMessage
  | SnapshotResponseMessage
  | ProposeMessage
  | ReadIndexMessage
  | ReadIndexResponseMessage
  | TimeoutNowMessage
  | TransferMessage;

export type MessageType = Message['type'];

/** The payload bytes of entries (what the size limits count). */
export function payloadBytes(entries: readonly { readonly data: Uint8Array }[]): number {
  let n = 0;
  for (const e of entries) n += e.data.byteLength;
  return n;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The data of a membership entry: the change, and the whole membership it results in. */
export interface MembershipEntryData {
  readonly change: MembershipChange;
  readonly membership: Membership;
}

export function encodeMembershipEntry(d: MembershipEntryData): Uint8Array {
  return encoder.encode(JSON.stringify(d));
}

export function decodeMembershipEntry(data: Uint8Array): MembershipEntryData {
  const v = JSON.parse(decoder.decode(data)) as MembershipEntryData;
  return { change: v.change, membership: { voters: [...v.membership.voters], learners: [...v.membership.learners] } };
}

/** The membership after `change`, or a message saying why the change is not allowed. */
export function applyChange(m: Membership, change: MembershipChange): Membership | string {
  const voters = new Set(m.voters);
  const learners = new Set(m.learners);
  const id = change.node;
  if (typeof id !== 'string' || id === '') return 'the node id must be a non-empty string';
  switch (change.type) {
    case 'addVoter':
      if (voters.has(id)) return `${id} is already a voter`;
      learners.delete(id);
      voters.add(id);
      break;
    case 'addLearner':
      if (learners.has(id)) return `${id} is already a learner`;
      voters.delete(id);
      learners.add(id);
      break;
    case 'remove':
      if (!voters.has(id) && !learners.has(id)) return `${id} is not a member`;
      voters.delete(id);
      learners.delete(id);
      break;
    default:
      return `unknown change type ${JSON.stringify((change as { type: unknown }).type)}`;
  }
  if (voters.size === 0) return 'a group needs at least one voter';
  return { voters: [...voters].sort(), learners: [...learners].sort() };
}

/** Check a membership given by a host (bootstrap or snapshot). */
export function checkMembership(m: Membership, where: string): void {
  const all = [...m.voters, ...m.learners];
  if (new Set(all).size !== all.length) {
    throw new InvalidArgumentError(`${where}: a node is listed twice (voters and learners must be disjoint)`);
  }
  if (all.some((id) => typeof id !== 'string' || id === '')) {
    throw new InvalidArgumentError(`${where}: node ids must be non-empty strings`);
  }
}
