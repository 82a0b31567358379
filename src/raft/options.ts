/** The core's options, read and checked by name (src/options.ts). */
import { InvalidArgumentError } from '../errors.js';
import { OptionReader } from '../options.js';
import type { Storage } from './log.js';
import type { NodeId } from './messages.js';
import { NO_RAFT_MUTANTS, checkRaftMutants, type RaftMutants } from './mutants.js';

export interface CoreOptions {
  /** This replica's id in the group. */
  readonly id: NodeId;
  /** The host's durable state (see log.ts). */
  readonly storage: Storage;
  /**
   * The core's only source of randomness: returns a number in [0, 1). Election timeouts are drawn from
   * [electionTicks, 2 × electionTicks) with it, so that replicas (and groups recovering together) do not time out
   * in step.
   */
  readonly random: () => number;
  /** Ticks without hearing from a leader before a follower campaigns (the minimum; default 10). */
  readonly electionTicks?: number;
  /** Ticks between a leader's heartbeats (default 1; must be below electionTicks). */
  readonly heartbeatTicks?: number;
  /** The last index the host's state machine applied before this start (default: the snapshot's index). */
  readonly applied?: number;
  /** Ask for pre-votes before raising the term (default true): a rejoining partitioned replica cannot depose. */
  readonly preVote?: boolean;
  /** A leader that has not heard from a majority for electionTicks steps down (default true). */
  readonly checkQuorum?: boolean;
  /**
   * 'safe' (default): every read is confirmed by a heartbeat round (ReadIndex). 'lease': a leader that heard from
   * a majority within leaseTicks answers without a round; safe only while clocks drift less than docs/raft.md says.
   */
  readonly readMode?: 'safe' | 'lease';
  /** The lease of 'lease' reads, in ticks: at most electionTicks − 2 (default electionTicks − 2). */
  readonly leaseTicks?: number;
  /** Payload bytes per append message (at least one entry is always sent; default 1 MiB). */
  readonly maxMessageBytes?: number;
  /** Appends in flight to one replica (default 256). */
  readonly maxInflightMessages?: number;
  /** Payload bytes in flight to one replica (default 32 MiB). */
  readonly maxInflightBytes?: number;
  /** Payload bytes a leader holds proposed but not yet committed before it refuses proposals (default 64 MiB). */
  readonly maxUncommittedBytes?: number;
  /** The largest proposal accepted, in bytes (default 1 MiB). */
  readonly maxProposalBytes?: number;
  /** Payload bytes of committed entries handed out per Ready (at least one entry; default 16 MiB). */
  readonly maxApplyBytes?: number;
  /** Bytes of snapshot per message (default 1 MiB). */
  readonly snapshotChunkBytes?: number;
  /**
   * A leader whose last Ready has not been advanced (persisted) for this many ticks steps down: a hung disk must
   * not keep a group's leadership (default electionTicks).
   */
  readonly persistStallTicks?: number;
  /** Deliberately broken variants, for the simulator and its tests only (mutants.ts; default none). */
  readonly mutants?: RaftMutants;
}

export interface ResolvedOptions {
  readonly id: NodeId;
  readonly storage: Storage;
  readonly random: () => number;
  readonly electionTicks: number;
  readonly heartbeatTicks: number;
  readonly applied: number;
  readonly preVote: boolean;
  readonly checkQuorum: boolean;
  readonly readMode: 'safe' | 'lease';
  readonly leaseTicks: number;
  readonly maxMessageBytes: number;
  readonly maxInflightMessages: number;
  readonly maxInflightBytes: number;
  readonly maxUncommittedBytes: number;
  readonly maxProposalBytes: number;
  readonly maxApplyBytes: number;
  readonly snapshotChunkBytes: number;
  readonly persistStallTicks: number;
  readonly mutants: RaftMutants;
}

const MIB = 1024 * 1024;

export function readCoreOptions(options: CoreOptions): ResolvedOptions {
  const r = new OptionReader(options, 'raft core options');
  const id = r.string('id', undefined, 256);
  if (id === undefined || id === '') throw new InvalidArgumentError('raft core options.id must be a non-empty string');
  const storage = r.required<Storage>('storage', (v) =>
    v !== null && typeof v === 'object' && typeof (v as Storage).entries === 'function'
      ? undefined
      : 'must implement Storage (src/raft/log.ts)',
  );
  const random = r.fn<() => number>('random');
  const electionTicks = r.integer('electionTicks', 10, { min: 3, max: 1_000_000 });
  const heartbeatTicks = r.integer('heartbeatTicks', 1, { min: 1, max: electionTicks - 1 });
  const applied = r.integer('applied', 0, { min: 0 });
  const preVote = r.boolean('preVote', true);
  const checkQuorum = r.boolean('checkQuorum', true);
  const readMode = r.oneOf('readMode', ['safe', 'lease'] as const, 'safe');
  const leaseTicks = r.integer('leaseTicks', electionTicks - 2, { min: 1, max: electionTicks - 2 });
  if (readMode === 'lease' && !checkQuorum) {
    throw new InvalidArgumentError(
      "raft core options.readMode 'lease' needs checkQuorum: true (followers must refuse votes while a leader's " +
        'lease may run); set checkQuorum or use readMode safe',
    );
  }
  const maxMessageBytes = r.integer('maxMessageBytes', MIB, { min: 1 });
  const maxInflightMessages = r.integer('maxInflightMessages', 256, { min: 1 });
  const maxInflightBytes = r.integer('maxInflightBytes', 32 * MIB, { min: 1 });
  const maxUncommittedBytes = r.integer('maxUncommittedBytes', 64 * MIB, { min: 1 });
  const maxProposalBytes = r.integer('maxProposalBytes', MIB, { min: 1 });
  const maxApplyBytes = r.integer('maxApplyBytes', 16 * MIB, { min: 1 });
  const snapshotChunkBytes = r.integer('snapshotChunkBytes', MIB, { min: 1 });
  const persistStallTicks = r.integer('persistStallTicks', electionTicks, { min: 1 });
  const mutants = r.optional<RaftMutants>('mutants', checkRaftMutants) ?? NO_RAFT_MUTANTS;
  r.done();
  return {
    id,
    storage,
    random,
    electionTicks,
    heartbeatTicks,
    applied,
    preVote,
    checkQuorum,
    readMode,
    leaseTicks,
    maxMessageBytes,
    maxInflightMessages,
    maxInflightBytes,
    maxUncommittedBytes,
    maxProposalBytes,
    maxApplyBytes,
    snapshotChunkBytes,
    persistStallTicks,
    mutants,
  };
}
