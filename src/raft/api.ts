/**
 * `rebalancer/raft`: Raft groups with your own replicated state machines (docs/raft.md).
 *
 *     const node = await startRaftNode({ id: 'n1', dataDir: './data/n1', listen: '127.0.0.1:7001',
 *                                        peers: { n2: '127.0.0.1:7002', n3: '127.0.0.1:7003' }, secret });
 *     const kv = node.openGroup('kv', { members: ['n1', 'n2', 'n3'], stateMachine });
 *     await kv.ready();
 *     await kv.command({ op: 'put', key: 'a', value: '1' });
 *     await kv.query({ op: 'get', key: 'a' }, { consistency: 'linearizable' });
 */
export {
  RaftGroup,
  RaftNode,
  jsonCodec,
  startRaftNode,
  type Codec,
  type Consistency,
  type GroupOptions,
  type GroupStatus,
  type QueryOptions,
  type RaftNodeEvents,
  type RaftNodeOptions,
  type RequestOptions,
  type StateMachine,
} from './node/index.js';
export type { Membership, MembershipChange } from './messages.js';
export { DataDirInUseError } from './node/data-dir-lock.js';
export type { TlsOptions } from './transport/transport.js';
export {
  ClosedError,
  CorruptLogError,
  DiskFailedError,
  DiskStalledError,
  InvalidArgumentError,
  LimitExceededError,
  NoQuorumError,
  NotLeaderError,
  PeerAuthError,
  PeerUnavailableError,
  RemoteFailedError,
  RaftDataLostError,
  RebalancerError,
  SessionExpiredError,
  StateMachineError,
  TimeoutError,
  type LeaderHint,
} from '../errors.js';
