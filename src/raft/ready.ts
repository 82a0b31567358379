/** What the core hands its host (docs/raft.md, "The Ready/advance contract"), and what its calls return. */
import type { Entry, HardState, Membership, Message, NodeId, ReadState, Snapshot } from './messages.js';

export type Role = 'follower' | 'preCandidate' | 'candidate' | 'leader';

/** Why a proposal, read or transfer was not taken (the caller retries, elsewhere or later). */
export type DropReason =
  'no-leader' | 'transferring' | 'too-large' | 'uncommitted-limit' | 'membership-pending' | 'invalid-membership-change';

export type Outcome =
  { readonly ok: true } | { readonly ok: false; readonly reason: DropReason; readonly detail: string };

export interface Ready {
  readonly role: Role;
  readonly lead: NodeId;
  readonly term: number;
  /** Persist first (with the entries and snapshot) when present: it changed since the last Ready. */
  readonly hardState: HardState | undefined;
  /** A snapshot from the leader: persist it (it replaces the whole log) and load it into the state machine. */
  readonly snapshot: Snapshot | undefined;
  /** Append to the durable log; the first entry's index truncates whatever the log held from there on. */
  readonly entries: readonly Entry[];
  /** Apply in order, after persisting this Ready. */
  readonly committedEntries: readonly Entry[];
  /** May be sent at once, before or while persisting (a leader's replication, pre-votes, forwards). */
  readonly messages: readonly Message[];
  /** Send only after hardState, snapshot and entries of this Ready are durable (votes, acknowledgements). */
  readonly messagesAfterPersist: readonly Message[];
  /** Answers to readIndex(): serve each once the state machine has applied its index. */
  readonly readStates: readonly ReadState[];
  /** Whether persisting needs an fsync (hard state or entries changed). */
  readonly mustSync: boolean;
  /** The membership, when it changed since the last Ready. */
  readonly membership: Membership | undefined;
}

export interface Status {
  readonly id: NodeId;
  readonly role: Role;
  readonly term: number;
  readonly vote: NodeId;
  readonly lead: NodeId;
  readonly committed: number;
  readonly applied: number;
  readonly lastIndex: number;
  readonly membership: Membership;
  readonly quiesced: boolean;
  readonly transferringTo: NodeId;
  /** Votes held after a loss of durable state, or until the host releases them (Core.holdVotes). */
  readonly votesHeld: 'released' | 'leader-seen' | undefined;
}

/** Messages that depend on nothing persisted in their Ready: they may leave before it is durable. */
export const SEND_AT_ONCE: ReadonlySet<Message['type']> = new Set<Message['type']>([
  'append',
  'heartbeat',
  'snapshot',
  'timeoutNow',
  'readIndexResponse',
  'preVote',
  'preVoteResponse',
  'propose',
  'readIndex',
  'transfer',
  'snapshotResponse',
]);
