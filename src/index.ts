/**
 * `rebalancer`: the public API. Backends live in subpath exports
 * (`rebalancer/sqlite`, `rebalancer/redis`, …) so that an application loads
 * only the driver it uses.
 */
export type {
  Clock,
  CommonStoreOptions,
  Compare,
  CompareOp,
  KeyValue,
  Op,
  OpResult,
  RangeResult,
  Session,
  SessionEnd,
  SessionOptions,
  SessionState,
  Store,
  StoreLimits,
  TimerHandle,
  TimerOptions,
  Txn,
  TxnResult,
  WatchHint,
  Watcher,
} from './store/contract.js';
export { STORE_LIMITS } from './store/validate.js';
export { ScaledClock, systemClock, VirtualClock } from './store/clock.js';
export {
  ClosedError,
  CorruptDataError,
  IncompatibleSchemaError,
  InvalidArgumentError,
  LimitExceededError,
  RebalancerError,
  SessionExpiredError,
  StoreUnavailableError,
  type ErrorCode,
} from './errors.js';
export { Election, type ElectionOptions, type Leadership } from './store/election.js';
export { openStore } from './store/open.js';
