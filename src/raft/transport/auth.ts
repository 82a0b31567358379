/**
 * The handshake's proofs: HMAC-SHA256 under the cluster's shared secret over a role label, the cluster id, both node
 * ids, both nonces and the four incarnation fields (each field length-prefixed, so no two different field lists
 * give the same input). The role label differs for the dialer and the acceptor: one side's proof can never be
 * replayed as the other's. The incarnations are inside the proofs: a man in the middle cannot make a node believe
 * it lost its data (it would then hold its votes), nor hide that it did.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { INCARNATION_BYTES, NONCE_BYTES, PROTOCOL_VERSION } from './handshake.js';

export { MAC_BYTES, NONCE_BYTES, PROTOCOL_VERSION } from './handshake.js';

export type Role = 'dialer' | 'acceptor';

export function nonce(): Uint8Array {
  return randomBytes(NONCE_BYTES);
}

/** A new incarnation id (128 random bits). */
export function newIncarnation(): Uint8Array {
  return randomBytes(INCARNATION_BYTES);
}

export interface ProofFields {
  readonly clusterId: string;
  readonly dialer: string;
  readonly acceptor: string;
  readonly dialerNonce: Uint8Array;
  readonly acceptorNonce: Uint8Array;
  readonly dialerIncarnation: Uint8Array;
  readonly acceptorIncarnation: Uint8Array;
  /** What the dialer last knew of the acceptor (undefined: never seen), and the other way round. */
  readonly dialerKnew: Uint8Array | undefined;
  readonly acceptorKnew: Uint8Array | undefined;
}

export function proof(secret: Uint8Array, role: Role, f: ProofFields): Uint8Array {
  const h = createHmac('sha256', secret);
  const field = (b: Uint8Array | string | undefined): void => {
    const buf = b === undefined ? Buffer.alloc(0) : typeof b === 'string' ? Buffer.from(b, 'utf8') : b;
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
  field(f.dialerIncarnation);
  field(f.acceptorIncarnation);
  field(f.dialerKnew);
  field(f.acceptorKnew);
  return h.digest();
}

/** Constant-time comparison of a received proof with the expected one. */
export function proofMatches(got: Uint8Array, expected: Uint8Array): boolean {
  return got.byteLength === expected.byteLength && timingSafeEqual(got, expected);
}
