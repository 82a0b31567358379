/**
 * `rebalancer/fleet`: many Raft groups (your replicated state machines) spread over the nodes of a fleet by
 * zone-aware rendezvous hashing, moved through Raft as nodes join, drain and die, reachable by name from any node
 * (docs/fleet.md).
 *
 *     const node = await joinFleet({ store, fleet: 'orders', node: { id, zone, address: '10.0.0.5:7001' },
 *                                    dataDir: '/var/lib/orders', secret, machines: { counter } });
 *     await node.addGroup('eu', { replicas: 3, machine: 'counter' });
 *     await node.command('eu', { add: 1 });
 *     await node.query('eu', 'total', { consistency: 'linearizable' });
 *     await node.deactivate(); // drain, then leave
 *
 * From a process that is not a node (a CLI, a web service): `connectFleet({ store, fleet, secret })` → FleetClient
 * with the same command/query/groups/status/addGroup/removeGroup.
 */
export {
  joinFleet,
  FleetNode,
  type FleetGroupInfo,
  type FleetMachine,
  type FleetNodeEvents,
  type FleetQueryOptions,
  type FleetRequestOptions,
  type JoinFleetOptions,
} from '../runtime/fleet/node.js';
export {
  connectFleet,
  FleetClient,
  type ConnectFleetOptions,
  type FleetClientEvents,
} from '../runtime/fleet/client.js';
export {
  fleetStatus,
  type FleetGroupStatus,
  type FleetNodeStatus,
  type FleetStatus,
  type GroupHealth,
} from '../protocol/fleet/status.js';
export type { GroupRecord, GroupSeed, ObservedRecord } from '../protocol/fleet/keys.js';
export { recoverGroup, type RecoverGroupOptions, type RecoverGroupResult } from '../protocol/fleet/recover.js';
export { MAX_FLEET_GROUPS, MAX_FLEET_GROUP_NAME_CHARS } from '../protocol/fleet/keys.js';
export { jsonCodec, type Codec, type StateMachine, type Consistency, type GroupStatus } from '../raft/api.js';
export type { NodeOptions, LeaseOptions } from '../runtime/common-options.js';
export type { ErrorEvent } from '../events.js';
export {
  ClosedError,
  CorruptDataError,
  DiskFailedError,
  DiskStalledError,
  FleetControlLostError,
  FleetGroupExistsError,
  FleetGroupNotFoundError,
  FleetRecoveryRefusedError,
  type FleetRecoveryRefusal,
  InvalidArgumentError,
  LimitExceededError,
  NodeIdInUseError,
  NoQuorumError,
  NotLeaderError,
  PeerAuthError,
  RebalancerError,
  StateMachineError,
  TimeoutError,
} from '../errors.js';
