/**
 * Deterministic, language-neutral 32-bit hashing for placement: FNV-1a over
 * UTF-8 bytes, and a murmur3-style finaliser to combine two hashes. No
 * randomness, no platform dependence: every node computes the same placement.
 */

const encoder = new TextEncoder();

/** FNV-1a 32-bit over the UTF-8 bytes of `s`, finalised (avalanche) so low bits are usable. */
export function hash32(s: string): number {
  let h = 0x811c9dc5;
  // Fast path for ASCII; fall back to UTF-8 bytes otherwise.
  let ascii = true;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c > 0x7f) {
      ascii = false;
      break;
    }
    h = Math.imul(h ^ c, 0x01000193);
  }
  if (!ascii) {
    h = 0x811c9dc5;
    for (const b of encoder.encode(s)) h = Math.imul(h ^ b, 0x01000193);
  }
  return fmix32(h >>> 0);
}

/** murmur3's 32-bit finaliser. */
export function fmix32(x: number): number {
  let h = x >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Combine a resource hash and a node hash into one well-mixed 32-bit value. */
export function combine32(a: number, b: number): number {
  return fmix32((a ^ Math.imul(b, 0x9e3779b1)) >>> 0);
}

/**
 * Weighted rendezvous score of (resource, node): −weight / ln(u) with u in
 * (0, 1) drawn from the combined hash. The node with the highest score wins;
 * a node with twice the weight wins twice as often.
 */
export function rendezvousScore(resourceHash: number, nodeHash: number, weight: number): number {
  const u = (combine32(resourceHash, nodeHash) + 0.5) / 4294967296;
  return -weight / Math.log(u);
}
