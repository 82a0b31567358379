/**
 * `rebalancer`: what every capability shares — opening a store, the store
 * contract, sessions and the election recipe, clocks, and every error.
 * Capabilities and backends live in subpath exports (`rebalancer/groups`,
 * `rebalancer/slots`, `rebalancer/sqlite`, …) so that an application loads only
 * what it uses.
 */
export type {
  Clock,
  ClockRateCheck,
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
  BrokerUnavailableError,
  ChildFailedError,
  ClockRateError,
  ClosedError,
  GroupNotFoundError,
  InvariantError,
  ListenerError,
  NodeIdInUseError,
  RevokedError,
  CorruptDataError,
  IncompatibleSchemaError,
  InvalidArgumentError,
  LimitExceededError,
  RebalancerError,
  SessionExpiredError,
  StoreDataLostError,
  StoreRecoveringError,
  StoreUnavailableError,
  type ErrorCode,
} from './errors.js';
export { Election, type ElectionOptions, type Leadership } from './store/election.js';
export { openStore } from './store/open.js';

// Capabilities have entry points of their own: `rebalancer/groups`, `rebalancer/slots`, `rebalancer/placement`
// (pure placement functions), `rebalancer/rabbitmq`; backends: `rebalancer/sqlite`, `rebalancer/redis`, …
