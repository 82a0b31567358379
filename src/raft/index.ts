/**
 * The sans-IO Raft core (docs/raft.md). Not yet a public entry point: the durable log, the transport and the
 * user-facing group build on it.
 */
export { Core, type DropReason, type Outcome, type Ready, type Role, type Status, type VoteHold } from './core.js';
export { RaftLog, type Storage } from './log.js';
export { MemoryStorage } from './memory-storage.js';
export type { CoreOptions } from './options.js';
export * from './messages.js';
export { NO_RAFT_MUTANTS, RAFT_MUTANTS, isRaftMutantName, type RaftMutantName, type RaftMutants } from './mutants.js';
