/** A Raft node and its groups (docs/raft.md, "Groups and state machines"). */
export {
  RaftGroup,
  type RemoteGroupSurface,
  type Consistency,
  type GroupBrief,
  type GroupStatus,
  type QueryOptions,
  type RequestOptions,
} from './group.js';
export {
  RaftNode,
  startRaftNode,
  type GroupOptions,
  type RaftNodeEvents,
  type RaftNodeIo,
  type RaftNodeOptions,
} from './node.js';
export { jsonCodec, type Codec, type StateMachine } from './state-machine.js';
export {
  RemoteGroupClient,
  serveGroupRequest,
  encodeGroupRequest,
  decodeGroupRequest,
  encodeGroupAnswer,
  decodeGroupAnswer,
  GROUP_REQUEST_VERSION,
  type GroupAnswer,
  type GroupRequest,
  type RemoteGroupClientOptions,
} from './remote-client.js';
