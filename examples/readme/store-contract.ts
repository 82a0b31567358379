/**
 * README, "The store contract in code": a session, an election with a fencing token, and a write guarded by the
 * leadership — which the store refuses once the leader's session has ended.
 *
 *   npx tsx examples/readme/store-contract.ts       # from the repository root; needs Redis (REBALANCER_STORE)
 *
 * It runs once and exits. (A failure on the way ends the process with exit code 1, open store or not.)
 */
import { Election, openStore } from 'rebalancer';

const store = await openStore(process.env['REBALANCER_STORE'] ?? 'redis://127.0.0.1:6379', { namespace: 'orders' });
const session = await store.openSession({ ttlMs: 5000 }); // kept alive in the background
const leadership = await new Election(store, { prefix: 'coordinator/' }).campaign(session, 'node-a');

// Every write a leader makes is guarded: if its session expired, the store refuses it.
const r = await store.txn({
  compare: [leadership.guard],
  then: [{ op: 'put', key: 'assignment', value: JSON.stringify({ token: leadership.token }) }],
});
if (!r.succeeded) console.log('no longer the leader');

console.log('leader with fencing token', leadership.token, r.succeeded ? 'wrote the assignment' : 'was refused');
// The same write after the session ended (as when a leader dies and its TTL passes) is refused.
await session.close();
const late = await store.txn({
  compare: [leadership.guard],
  then: [{ op: 'put', key: 'assignment', value: JSON.stringify({ token: leadership.token }) }],
});
console.log(late.succeeded ? 'a stale leader wrote: that is a bug' : 'the stale leader was refused');
await store.close(); // ends the connections: the process exits
