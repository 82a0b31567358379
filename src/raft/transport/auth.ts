/**
 * The handshake's proofs: HMAC-SHA256 under the cluster's shared secret over a role label, the cluster id, both node
 * ids and both nonces (each field length-prefixed, so no two different field lists give the same input). The role
 * label differs for the dialer and the acceptor: one side's proof can never be replayed as the other's.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export const NONCE_BYTES = 32;
export const MAC_BYTES = 32;
export const PROTOCOL_VERSION = 1;

export type Role = 'dialer' | 'acceptor';

export function nonce(): Uint8Array {
  return randomBytes(NONCE_BYTES);
}

export function proof(
  secret: Uint8Array,
  role: Role,
  f: { clusterId: string; dialer: string; acceptor: string; dialerNonce: Uint8Array; acceptorNonce: Uint8Array },
): Uint8Array {
  const h = createHmac('sha256', secret);
  const field = (b: Uint8Array | string): void => {
    const buf = typeof b === 'string' ? Buffer.from(b, 'utf8') : b;
    const len = Buffer.allocUnsafe(4);
    len.writeUInt32BE(buf.byteLength, 0);
    h.update(len);
    h.update(buf);
  };
  field(`rebalancer raft transport v${PROTOCOL_VERSION} ${role}`);
  field(f.clusterId);
  field(f.dialer);
  field(f.acceptor);
  field(f.dialerNonce);
  field(f.acceptorNonce);
  return h.digest();
}

/** Constant-time comparison of a received proof with the expected one. */
export function proofMatches(got: Uint8Array, expected: Uint8Array): boolean {
  return got.byteLength === expected.byteLength && timingSafeEqual(got, expected);
}
