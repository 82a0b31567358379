/** The Raft transport (docs/raft.md, "Transport"): codec and queues (pure), and the TCP/TLS transport. */
export * from './codec.js';
export * from './handshake.js';
export { PeerQueue, type PeerQueueLimits, type PeerQueueStats } from './peer-queue.js';
export {
  Transport,
  reconnectDelayMs,
  tcpNetwork,
  tlsNetwork,
  type Conn,
  type Network,
  type PeerAddress,
  type PeerIdentity,
  type PeerStats,
  type TlsOptions,
  type TransportOptions,
  type Timers,
  type TimerHandle,
} from './transport.js';
