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
  BrokerUnavailableError,
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
  StoreUnavailableError,
  type ErrorCode,
} from './errors.js';
export { Election, type ElectionOptions, type Leadership } from './store/election.js';
export { openStore } from './store/open.js';

// Resource groups.
export { joinGroup, GroupMember } from './runtime/group-member.js';
export type { AssignedResource, GroupEvents } from './runtime/group-member.js';
export type { JoinOptions, ResourceContext, ResourceHandler, ResourceSource } from './runtime/options.js';
export { GroupAdmin } from './runtime/registry.js';
export { groupStatus } from './runtime/status.js';
export type { GroupStatus, NodeStatus, ResourceState, ResourceStatus } from './runtime/status.js';
export type { Protocol } from './protocol/groups/keys.js';
export type { StopReason } from './protocol/groups/member.js';

// Placement (pure functions).
export {
  place,
  rankNodes,
  countMoves,
  shares,
  PLACEMENT_STRATEGIES,
  type Assignment,
  type PlacementInput,
  type PlacementNode,
  type PlacementStrategy,
} from './placement/index.js';

// Slots (pure parts: key hash, placement, transition plan, routing table).
export { slotForKey, keyHash16, crc16, DEFAULT_SLOT_COUNT, MAX_SLOT_COUNT } from './placement/slot-hash.js';
export {
  computeSlotPlacement,
  planTransition,
  siteLoads,
  slotPrimary,
  slotReplicas,
  type SiteLoad,
  type SlotChange,
  type SlotPlacement,
  type SlotPlacementInput,
  type SlotSite,
  type TransitionPlan,
} from './placement/slots.js';
export { RoutingTable, type SiteAddresses, type SiteRoute, type SlotRoute } from './placement/routing.js';
