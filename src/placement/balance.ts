/**
 * Leader balancing, shared by slot placement (one primary per slot) and fleet placement (one desired leader per
 * Raft group): given each key's replica set, choose one leader per key among its replicas so that every node leads
 * between the floor and the ceiling of its weighted share of the keys, moving as few leaders as possible away from
 * a starting choice. Pure: no clock, no IO, no randomness; everything iterates in node and key order.
 *
 * Replica sets are rows of a compressed table: key `s` has the node indices `rank[rowStart[s]]` to
 * `rank[rowStart[s + 1] − 1]`, so keys may have different replica counts (fleet groups do; slots do not).
 */

const EPS = 1e-9;

/**
 * Leader bounds: each node's weighted share of `keyCount`, rounded down (`lo`) and up (`hi`). Shares sum to
 * keyCount, so a choice with every node within its bounds exists whenever the replica sets allow one.
 */
export function leaderBounds(weights: readonly number[], keyCount: number): { lo: Int32Array; hi: Int32Array } {
  const N = weights.length;
  const total = weights.reduce((a, w) => a + w, 0);
  const lo = new Int32Array(N);
  const hi = new Int32Array(N);
  for (let i = 0; i < N; i++) {
    const share = (keyCount * weights[i]!) / total;
    // EPS: a share that is an integer up to rounding (819.9999999) counts as that integer.
    lo[i] = Math.floor(share + EPS);
    hi[i] = Math.max(lo[i]!, Math.ceil(share - EPS));
  }
  return { lo, hi };
}

/** Row starts for `keyCount` rows of `R` replicas each (slot placement's table). */
export function uniformRows(keyCount: number, R: number): Int32Array {
  const rowStart = new Int32Array(keyCount + 1);
  for (let s = 0; s <= keyCount; s++) rowStart[s] = s * R;
  return rowStart;
}

/**
 * Choose one leader per key among its replicas so that every node's count is within [lo, hi] where the replica
 * sets allow it. `leader[s]` holds the starting choice (one of the key's replicas) and receives the result. Two
 * phases of augmenting paths (shortest chains of leader hand-overs, by breadth-first search):
 *  A. a node above `hi` hands a key down a chain that ends at a node below `hi`;
 *  B. a node below `lo` takes a key up a chain that starts at a node above `lo`.
 * Each applied chain changes only its two ends' counts. Within a phase, a node for which no chain exists stays
 * without one: a later chain runs through nodes it cannot reach (else it could have used that chain's end).
 * Keys with no replicas (an empty row) must have no leader and are skipped: pass `leader[s] = -1`.
 */
export function balanceLeaders(
  N: number,
  keyCount: number,
  rowStart: Int32Array,
  rank: Uint16Array,
  leader: Int32Array,
  lo: Int32Array,
  hi: Int32Array,
): void {
  const count = new Int32Array(N);
  // lists[a]: keys whose leader is a (swap-remove with pos[]); holds[a]: keys a is a replica of (fixed).
  const lists: number[][] = Array.from({ length: N }, () => []);
  const pos = new Int32Array(keyCount);
  const end = rowStart[keyCount]!;
  const holdStart = new Int32Array(N + 1);
  for (let k = 0; k < end; k++) holdStart[rank[k]! + 1]!++;
  for (let i = 0; i < N; i++) holdStart[i + 1]! += holdStart[i]!;
  const holds = new Int32Array(end);
  const fill = holdStart.slice(0, N);
  for (let s = 0; s < keyCount; s++) {
    for (let k = rowStart[s]!; k < rowStart[s + 1]!; k++) holds[fill[rank[k]!]!++] = s;
    const p = leader[s]!;
    if (p < 0) continue;
    count[p]!++;
    pos[s] = lists[p]!.length;
    lists[p]!.push(s);
  }
  const move = (s: number, from: number, to: number): void => {
    const list = lists[from]!;
    const at = pos[s]!;
    const last = list.pop()!;
    if (last !== s) {
      list[at] = last;
      pos[last] = at;
    }
    pos[s] = lists[to]!.length;
    lists[to]!.push(s);
    leader[s] = to;
  };
  const seen = new Int32Array(N);
  let stamp = 0;
  const queue = new Int32Array(N);
  const viaKey = new Int32Array(N);
  const viaNode = new Int32Array(N);

  // A: from x (above hi) to the nearest node below hi, through keys x (then each next node) leads.
  const pushDown = (x: number): boolean => {
    seen[x] = ++stamp;
    queue[0] = x;
    for (let head = 0, tail = 1; head < tail;) {
      const a = queue[head++]!;
      const list = lists[a]!;
      for (let k = 0; k < list.length; k++) {
        const s = list[k]!;
        for (let r = rowStart[s]!; r < rowStart[s + 1]!; r++) {
          const b = rank[r]!;
          if (seen[b] === stamp) continue;
          seen[b] = stamp;
          viaKey[b] = s;
          viaNode[b] = a;
          if (count[b]! < hi[b]!) {
            count[b]!++;
            count[x]!--;
            for (let y = b; y !== x; y = viaNode[y]!) move(viaKey[y]!, viaNode[y]!, y);
            return true;
          }
          queue[tail++] = b;
        }
      }
    }
    return false;
  };

  // B: to x (below lo) from the nearest node above lo, through keys x (then each next node) is a replica of.
  const pullUp = (x: number): boolean => {
    seen[x] = ++stamp;
    queue[0] = x;
    for (let head = 0, tail = 1; head < tail;) {
      const a = queue[head++]!;
      for (let k = holdStart[a]!; k < holdStart[a + 1]!; k++) {
        const s = holds[k]!;
        const b = leader[s]!;
        if (seen[b] === stamp) continue;
        seen[b] = stamp;
        viaKey[b] = s;
        viaNode[b] = a;
        if (count[b]! > lo[b]!) {
          count[b]!--;
          count[x]!++;
          for (let y = b; y !== x; y = viaNode[y]!) move(viaKey[y]!, y, viaNode[y]!);
          return true;
        }
        queue[tail++] = b;
      }
    }
    return false;
  };

  // A lowers the total excess above hi, B the total shortfall below lo, and neither raises the other's; a B chain
  // can free room below hi for a node A gave up on, so alternate until neither moves anything.
  for (let progress = true; progress;) {
    progress = false;
    for (let x = 0; x < N; x++) while (count[x]! > hi[x]! && pushDown(x)) progress = true;
    for (let x = 0; x < N; x++) while (count[x]! < lo[x]! && pullUp(x)) progress = true;
  }
}
