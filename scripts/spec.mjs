// Checks the Quint specs of the protocols, offline: spec/groups (the
// resource-group protocols), spec/slots (the slots migration handshake) and
// spec/fleet (the fleet: plan.qnt, the membership plan; controlLoss.qnt, the
// control-store-loss rule).
//
//   1. `quint typecheck` on every .qnt file that no check below loads (the
//      parameterised machines; `quint run` and `quint test` typecheck the
//      files they load, and fail on a type error);
//   2. `quint test` on every module with scenario tests (`run ...Test`);
//   3. `quint run` random simulations: the correct protocols with every
//      safety invariant (must hold), and the bug variants (must be caught).
//
// Only Quint's TypeScript backend is used: the default (Rust) backend and
// `quint verify` (Apalache) download binaries, which fails offline.
// Seeds are pinned, so a run is reproducible; each line prints its seed.
//
//   npm run spec                      everything (about 1-2 min on 2 cores)
//   npm run spec -- --seed 0x2a       another seed for every check
//   npm run spec -- --scale 0.2       fewer samples (quick look)
//   npm run spec -- --jobs 1          run the checks one at a time
//   npm run spec -- --dir slots       only the specs of one directory under spec/
//   npm run spec -- --verbose         print Quint's output of every check
//
// Exit status 1 if a spec does not typecheck, a test fails, an invariant of a
// correct spec is violated, a bug variant is NOT caught, or Quint errs.
//
// Each check names its directory under spec/ (`dir`); to add a spec, add its
// directory to SPEC_DIRS, its checks to RUNS and TESTS, and a line to
// `describers` that summarises the last state of a counterexample.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync, readdirSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const specRoot = join(root, 'spec');
const SPEC_DIRS = ['groups', 'slots', 'fleet'];
const quint = createRequire(import.meta.url).resolve('@informalsystems/quint/dist/src/cli.js');

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const seedOption = option('--seed', undefined);
const seed = seedOption ?? '0x5eed';
const scale = Number(option('--scale', '1'));
const jobs = Math.max(1, Number(option('--jobs', String(Math.min(2, availableParallelism())))));
const verbose = args.includes('--verbose');
const onlyDir = option('--dir', undefined);
if (onlyDir !== undefined && !SPEC_DIRS.includes(onlyDir))
  throw new Error(`--dir must be one of ${SPEC_DIRS.join(', ')}`);
if (!(scale > 0)) throw new Error('--scale must be positive');

const LOCK_SAFETY = ['OneActiveHolder', 'ActiveHolderHoldsLock', 'TokensIncrease', 'ActiveHolderHasNewestToken'];
const RB_WITNESSES = [
  'Takeover',
  'HandlerOutlivesSession',
  'OldHandlerOverlapsNewHolder',
  'ReaddedWhileLocked',
  'StaleWriteRefused',
  'LostAcquireAdopted',
];
const GB_WITNESSES = ['Takeover', 'HandlerOutlivesSession', 'BarrierCompleted', 'BarrierTimedOut', 'StaleWriteRefused'];
const PRIMARY_SAFETY = ['OnePrimary', 'ActivePrimaryHoldsLock', 'EpochsIncrease', 'ActivePrimaryHasNewestEpoch'];
const SLOTS_PLANNED_WITNESSES = [
  'PlannedHandoff',
  'PlannedReleaseAtFloor',
  'PlannedLeaveCompleted',
  'StaleWriteRefused',
];
const PLAN_SAFETY = [
  'PlannedStepsKeepQuorum',
  'RemovalsKeepDesiredCount',
  'LeaderIsVoter',
  'WellFormed',
  'StuckMeansNoChange',
];
const samples = (n) => Math.max(1, Math.round(n * scale));

// What to check. `expect: 'violation'` means the check passes only if Quint
// finds a counterexample to one of `invariants`.
const ALL_RUNS = [
  {
    name: 'resource barrier',
    dir: 'groups',
    file: 'resourceBarrier.qnt',
    main: 'resourceBarrier',
    invariants: LOCK_SAFETY,
    witnesses: RB_WITNESSES,
    samples: samples(450),
    steps: 80,
    expect: 'ok',
  },
  {
    name: 'resource barrier, coordinator writes unguarded',
    dir: 'groups',
    file: 'resourceBarrier.qnt',
    main: 'resourceBarrierUnguarded',
    invariants: LOCK_SAFETY,
    witnesses: ['Takeover', 'StaleWriteLanded', 'GrantedTwice'],
    samples: samples(200),
    steps: 80,
    expect: 'ok',
  },
  {
    name: 'global barrier (as designed)',
    dir: 'groups',
    file: 'globalBarrier.qnt',
    main: 'globalBarrier',
    invariants: LOCK_SAFETY,
    witnesses: GB_WITNESSES,
    samples: samples(250),
    steps: 100,
    expect: 'ok',
  },
  {
    name: 'global barrier, proposed fix',
    dir: 'groups',
    file: 'globalBarrier.qnt',
    main: 'globalBarrierFixed',
    invariants: [...LOCK_SAFETY, 'OneGenerationActive'],
    witnesses: GB_WITNESSES,
    samples: samples(300),
    steps: 100,
    expect: 'ok',
  },
  {
    name: 'BUG reused name: remove deletes held/<r>',
    dir: 'groups',
    file: 'resourceBarrier.qnt',
    main: 'resourceBarrierReusedName',
    // Any seed finds the bug; this one's counterexample is the textbook
    // story (remove, re-add, the new grantee takes it while the old runs).
    seed: '0x1',
    invariants: ['OneActiveHolder'],
    samples: 3000, // a cap: the run stops at the first violation
    steps: 40,
    expect: 'violation',
  },
  {
    name: 'BUG release before the handler stopped',
    dir: 'groups',
    file: 'resourceBarrier.qnt',
    main: 'resourceBarrierEarlyRelease',
    invariants: ['OneActiveHolder'],
    samples: 3000, // a cap: the run stops at the first violation
    steps: 40,
    expect: 'violation',
  },
  {
    name: 'BUG no self-fencing',
    dir: 'groups',
    file: 'resourceBarrier.qnt',
    main: 'resourceBarrierNoSelfFence',
    invariants: ['OneActiveHolder'],
    samples: 3000, // a cap: the run stops at the first violation
    steps: 40,
    expect: 'violation',
  },
  {
    name: 'FINDING global barrier as designed: drain timeout',
    dir: 'groups',
    file: 'globalBarrier.qnt',
    main: 'globalBarrier',
    invariants: ['OneGenerationActive'],
    samples: 3000, // a cap: the run stops at the first violation
    steps: 60,
    expect: 'violation',
  },
  {
    name: 'GAP stuck handler outlives its session',
    dir: 'groups',
    file: 'resourceBarrier.qnt',
    main: 'resourceBarrier',
    invariants: ['NoOverlappingUnsettledHandlers'],
    samples: 3000, // a cap: the run stops at the first violation
    steps: 60,
    expect: 'violation',
  },
  // --- slots (spec/slots/handshake.qnt) ---
  {
    name: 'slots handshake, with faults',
    dir: 'slots',
    file: 'handshake.qnt',
    main: 'handshake',
    invariants: PRIMARY_SAFETY,
    witnesses: ['Handoff', 'FencedWhileLocked', 'StaleWriteRefused'],
    samples: samples(150),
    steps: 80,
    expect: 'ok',
  },
  {
    name: 'slots, release fixed, planned moves',
    dir: 'slots',
    file: 'handshake.qnt',
    main: 'handshakeReleaseFixed',
    invariants: [...PRIMARY_SAFETY, 'ReadyReplicasKept'],
    witnesses: SLOTS_PLANNED_WITNESSES,
    samples: samples(200),
    steps: 80,
    expect: 'ok',
  },
  {
    name: 'slots, release fixed, coordinator keeps no old',
    dir: 'slots',
    file: 'handshake.qnt',
    main: 'handshakeNoKeepOld',
    invariants: [...PRIMARY_SAFETY, 'ReadyReplicasKept'],
    witnesses: SLOTS_PLANNED_WITNESSES,
    samples: samples(60),
    steps: 80,
    expect: 'ok',
  },
  {
    name: 'slots, coordinator writes unguarded',
    dir: 'slots',
    file: 'handshake.qnt',
    main: 'handshakeUnguarded',
    invariants: PRIMARY_SAFETY,
    witnesses: ['Handoff', 'StaleWriteLanded'],
    samples: samples(60),
    steps: 80,
    expect: 'ok',
  },
  {
    name: 'slots BUG release without the ready check',
    dir: 'slots',
    file: 'handshake.qnt',
    main: 'handshakeNoReadyCheck',
    invariants: ['ReadyReplicasKept'],
    samples: 3000, // a cap: the run stops at the first violation
    steps: 50,
    expect: 'violation',
  },
  {
    name: 'slots BUG take over without compare-exists-false',
    dir: 'slots',
    file: 'handshake.qnt',
    main: 'handshakeBlindTakeOver',
    invariants: ['OnePrimary'],
    samples: 3000, // a cap: the run stops at the first violation
    steps: 50,
    expect: 'violation',
  },
  {
    name: 'slots BUG step down deletes the lock early',
    dir: 'slots',
    file: 'handshake.qnt',
    main: 'handshakeEarlyLockDelete',
    invariants: ['OnePrimary'],
    samples: 3000, // a cap: the run stops at the first violation
    steps: 50,
    expect: 'violation',
  },
  {
    name: 'slots BUG no self-fencing',
    dir: 'slots',
    file: 'handshake.qnt',
    main: 'handshakeNoSelfFence',
    // Any seed finds it (0x5eed after ~200 traces); this one within ~30.
    seed: '0x1',
    invariants: ['OnePrimary'],
    samples: 3000, // a cap: the run stops at the first violation
    steps: 60,
    expect: 'violation',
  },
  {
    name: 'FINDING slots as designed: release rule',
    dir: 'slots',
    file: 'handshake.qnt',
    main: 'handshakePlanned',
    invariants: ['ReadyReplicasKept'],
    samples: 3000, // a cap: the run stops at the first violation
    steps: 50,
    expect: 'violation',
  },
  {
    name: 'fleet plan (as designed)',
    dir: 'fleet',
    file: 'planVariants.qnt',
    main: 'planDesign',
    invariants: PLAN_SAFETY,
    witnesses: ['MovedAndConverged', 'Transferred', 'RemovedWhileDegraded', 'Stuck', 'Promoted'],
    samples: samples(400),
    steps: 60,
    expect: 'ok',
  },
  ...[
    ['remove before add', 'planRemoveBeforeAdd'],
    ['promote before caught up', 'planPromoteUnhealthy'],
    ['remove without the quorum check', 'planRemoveUnsafe'],
  ].map(([what, main]) => ({
    name: `fleet plan BUG ${what}`,
    dir: 'fleet',
    file: 'planVariants.qnt',
    main,
    invariants: PLAN_SAFETY,
    samples: 2000, // a cap: the run stops at the first violation
    steps: 60,
    expect: 'violation',
  })),
  // --- fleet: the control store loses its data (spec/fleet/controlLoss.qnt) ---
  ...(() => {
    const f = { dir: 'fleet', file: 'controlLoss.qnt' };
    const safety = ['NoDataDropped', 'NoMerge', 'CounterPastRecords', 'OrphansHeld', 'PlacedUnderAnId'];
    const seen = ['LossWithReplicas', 'OrphanWrittenBack', 'WriteBackRefused', 'OrphanReclaimed', 'RemovalDropped'];
    // samples: 3000 is a cap, the run stops at the first violation
    const caught = (name, main, invariants, more = {}) => ({
      ...f,
      name,
      main,
      invariants,
      samples: 3000,
      steps: 40,
      expect: 'violation',
      ...more,
    });
    return [
      {
        ...f,
        name: 'fleet control loss, one loss, one-step rounds',
        main: 'controlLossOneLoss',
        invariants: [...safety, 'UniqueGenerations'],
        witnesses: [...seen, 'SameIdTwoIncarnations'],
        samples: samples(200),
        steps: 60,
        expect: 'ok',
      },
      {
        ...f,
        name: 'fleet control loss, fixes F1 F2, three losses',
        main: 'controlLossFixed',
        invariants: safety,
        witnesses: [...seen, 'RoundStraddledLoss', 'SameIdTwoIncarnations'],
        samples: samples(300),
        steps: 60,
        expect: 'ok',
      },
      caught('fleet BUG missing record dropped (pre-ADR 0023)', 'controlLossDropOnMissing', ['NoDataDropped']),
      caught('fleet BUG write-back leaves the counter', 'controlLossNoRaise', ['NoMerge']),
      caught('fleet BUG meta record read first', 'controlLossMetaFirst', ['NoDataDropped']),
      // Seeds with short counterexamples (other seeds find both too).
      caught('FINDING F1 fleet round straddles a loss', 'controlLoss', ['NoDataDropped'], { seed: '0x2a', steps: 60 }),
      caught('FINDING F2 fleet two losses merge', 'controlLossTwoLosses', ['NoMerge'], { seed: '0x1' }),
      caught('GAP fleet removed group written back', 'controlLossFixed', ['RemovedStaysRemoved']),
    ];
  })(),
];

// [directory under spec/, file, module with `run ...Test` scenarios]
const ALL_TESTS = [
  ['groups', 'resourceBarrier.qnt', 'resourceBarrierTests'],
  ['groups', 'globalBarrier.qnt', 'globalBarrierTests'],
  ['slots', 'handshake.qnt', 'handshakeTests'],
  ['fleet', 'planVariants.qnt', 'planTests'],
  ['fleet', 'controlLoss.qnt', 'controlLossTests'],
];

const selected = (dir) => onlyDir === undefined || dir === onlyDir;
const RUNS = ALL_RUNS.filter((c) => selected(c.dir));
const TESTS = ALL_TESTS.filter(([dir]) => selected(dir));
const files = SPEC_DIRS.filter(selected).flatMap((dir) =>
  readdirSync(join(specRoot, dir))
    .filter((f) => f.endsWith('.qnt'))
    .sort()
    .map((file) => ({ dir, file })),
);

function quintRun(dir, argv, timeoutMs) {
  return new Promise((resolve) => {
    const started = performance.now();
    const child = spawn(process.execPath, [quint, ...argv], {
      cwd: join(specRoot, dir),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, out, argv, seconds: (performance.now() - started) / 1000 });
    });
  });
}

// --- ITF (Informal Trace Format) helpers, to print counterexamples briefly ---
function decode(v) {
  if (Array.isArray(v)) return v.map(decode);
  if (v === null || typeof v !== 'object') return v;
  if ('#bigint' in v) return Number(v['#bigint']);
  if ('#map' in v) return new Map(v['#map'].map(([k, x]) => [JSON.stringify(decode(k)), decode(x)]));
  if ('#set' in v) return v['#set'].map(decode);
  if ('#tup' in v) return v['#tup'].map(decode);
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, decode(x)]));
}
const field = (state, name) => state[Object.keys(state).find((k) => k.endsWith(`::${name}`) || k === name)];
const key = (s) => JSON.parse(s);

// Per spec directory: how to print one step and the last state.
const describers = {
  groups: {
    step(a) {
      const argsText = [a.node, a.name].filter((x) => x !== '').join(',');
      return `${a.kind}(${argsText})`;
    },
    final(last) {
      const nodes = field(last, 'nodes');
      const store = field(last, 'store');
      const running = [];
      for (const [n, nd] of nodes) {
        for (const [r, h] of nd.handlers) {
          if (h.phase !== 'running' && h.phase !== 'draining') continue;
          const owner = nd.up && h.session === nd.session && !nd.fenced;
          running.push(
            `${key(n)} ${h.phase} ${key(r)} (token ${h.token}, gen ${h.gen}, session ${h.session}${owner ? '' : ', fenced'})`,
          );
        }
      }
      const held = [...store.held].map(([r, k]) => `held/${key(r)}=${k.node}#${k.token}`);
      return `handlers: ${running.join('; ') || 'none'} | locks: ${held.join(' ') || 'none'}`;
    },
  },
  slots: {
    step(a) {
      // site ids start at 1 (0: none), slots at 0 (-1: none)
      const argsText = [a.site > 0 ? `s${a.site}` : '', a.slot >= 0 ? `slot ${a.slot}` : ''].filter((x) => x).join(',');
      return `${a.kind}(${argsText})`;
    },
    final(last) {
      const sites = field(last, 'sites');
      const store = field(last, 'store');
      const primaries = [];
      for (const [x, sd] of sites) {
        if (!sd.up || sd.fenced) continue;
        for (const [s, role] of sd.roles)
          primaries.push(`${key(x)} of slot ${key(s)} (${role.phase}, epoch ${role.epoch})`);
      }
      const locks = [...store.locks].map(([s, k]) => `primary/${key(s)}=${k.site}#${k.epoch}`);
      const ready = [...store.ready].map(([x, k]) => `ready/${key(x)}=[${k.slots.join(',')}]`);
      const live = [...store.sites.keys()].map(key);
      return (
        `primaries: ${primaries.join('; ') || 'none'} | locks: ${locks.join(' ') || 'none'} | ` +
        `${ready.join(' ') || 'no ready/'} | live sites: ${live.join(',') || 'none'}`
      );
    },
  },
  // One describer per directory: controlLoss.qnt's states are told by `store.meta`, plan.qnt's by `voters`.
  fleet: {
    step(a) {
      const at = [a.node > 0 ? `n${a.node}` : '', a.name ? `${a.name}:${a.gen}` : ''].filter((x) => x).join(',');
      return `${a.kind}(${at})${a.stale ? '[read before the loss]' : ''}`;
    },
    final(last) {
      const store = field(last, 'store');
      if (store?.meta === undefined) {
        if (field(last, 'voters') === undefined) return JSON.stringify(field(last, 'lastAction'));
        const set = (name) => `{${field(last, name).join(',')}}`;
        return (
          `voters ${set('voters')} learners ${set('learners')} leader ${field(last, 'leader') || 'none'} | caught ` +
          `up ${set('caughtUp')} | up ${set('up')} live ${set('live')} | desired ${set('desired')} led by ` +
          `${field(last, 'desiredLeader')} | healthy before/after ${field(last, 'healthyBefore')}/` +
          `${field(last, 'healthyAfter')}`
        );
      }
      const m = store.meta;
      const groups = [...store.groups].map(([g, r]) => `${key(g)}:${r.gen}#${r.inc}`);
      const nodes = [...field(last, 'nodes')].map(([n, nd]) => {
        const reps = [...nd.replicas].map(([r, x]) => {
          const [name, gen] = key(r);
          const as = x.as !== 0 && x.as !== x.inc ? ` taken for #${x.as}` : '';
          return `${name}:${gen}#${x.inc}${as}${nd.orphans.has(r) ? ` orphan(of id ${nd.orphans.get(r)})` : ''}`;
        });
        return `n${key(n)}${nd.up ? '' : ' down'} id ${nd.control || '-'}: ${reps.join(' ') || 'nothing'}`;
      });
      return (
        `meta id ${m.id || 'none'}, counter ${m.counter}, issued [${m.issued.join(',')}], groups ` +
        `${groups.join(' ') || 'none'} (name:gen#incarnation) | ${nodes.join('; ')} | ` +
        `dropped #${field(last, 'dropped').join(',') || '-'}, removed #${field(last, 'removed').join(',') || '-'}`
      );
    },
  },
};

function describeTrace(dir, itfFile) {
  const trace = JSON.parse(readFileSync(itfFile, 'utf8'));
  const states = trace.states.map(decode);
  const describer = describers[dir];
  const steps = states.slice(1).map((s) => describer.step(field(s, 'lastAction')));
  return { steps, final: describer.final(states[states.length - 1]) };
}

// --- the checks ---
const tmp = mkdtempSync(join(tmpdir(), 'rebalancer-spec-'));
const results = [];

async function typecheck({ dir, file }) {
  const r = await quintRun(dir, ['typecheck', file], 120_000);
  return { kind: 'typecheck', name: `${dir}/${file}`, result: r.code === 0 ? 'ok' : 'FAILED', pass: r.code === 0, r };
}

async function test([dir, file, main]) {
  const r = await quintRun(dir, ['test', file, '--backend=typescript', `--main=${main}`, `--seed=${seed}`], 120_000);
  const passed = [...r.out.matchAll(/ok (\w+) passed/g)].map((m) => m[1]);
  const pass = r.code === 0 && passed.length > 0;
  return {
    kind: 'test',
    name: `${main}`,
    detail: passed.join(', '),
    result: pass ? `ok (${passed.length} scenario${passed.length > 1 ? 's' : ''})` : 'FAILED',
    pass,
    r,
  };
}

async function simulate(c, index) {
  const itf = join(tmp, `trace-${index}.itf.json`);
  const runSeed = seedOption ?? c.seed ?? seed;
  const argv = [
    'run',
    c.file,
    '--backend=typescript',
    `--main=${c.main}`,
    `--seed=${runSeed}`,
    `--max-samples=${c.samples}`,
    `--max-steps=${c.steps}`,
    `--out-itf=${itf}`,
    '--invariants',
    ...c.invariants,
    ...(c.witnesses ? ['--witnesses', ...c.witnesses] : []),
  ];
  const r = await quintRun(c.dir, argv, 600_000);
  const ok = r.code === 0 && /\[ok\] No violation found/.test(r.out);
  const violation = r.code !== 0 && /\[violation\]/.test(r.out);
  // Quint names the violated invariants only when it checks several.
  const named = [...r.out.matchAll(/❌ (\w+)/g)].map((m) => m[1]);
  const violated = named.length > 0 ? named : c.invariants.length === 1 ? c.invariants : ['?'];
  const rate = r.out.match(/\((\d+)ms at (\d+) traces\/second\)/);
  const explored = rate ? Math.max(1, Math.round((Number(rate[1]) * Number(rate[2])) / 1000)) : undefined;
  const witnesses = [...r.out.matchAll(/^(\w+) was witnessed in (\d+) trace\(s\) out of (\d+)/gm)].map(
    (m) => `${m[1]} ${m[2]}/${m[3]}`,
  );
  let result;
  let pass;
  if (c.expect === 'ok') {
    pass = ok;
    result = ok ? 'ok' : violation ? `VIOLATED ${violated.join(' ')}` : 'ERROR';
  } else {
    pass = violation;
    result = violation ? `violation found as expected (${violated.join(' ')})` : ok ? 'NOT CAUGHT' : 'ERROR';
  }
  const trace = violation && existsSync(itf) ? describeTrace(c.dir, itf) : undefined;
  return {
    kind: 'run',
    name: c.name,
    dir: c.dir,
    module: c.main,
    invariants: c.invariants,
    seed: runSeed,
    samples: violation ? `~${explored ?? '?'} of ${c.samples}` : `${c.samples}`,
    steps: c.steps,
    result,
    pass,
    witnesses,
    trace,
    r,
  };
}

const loaded = new Set([...RUNS.map((c) => `${c.dir}/${c.file}`), ...TESTS.map(([dir, file]) => `${dir}/${file}`)]);
const queue = [
  ...RUNS.map((c, i) => () => simulate(c, i)),
  ...TESTS.map((t) => () => test(t)),
  ...files.filter((f) => !loaded.has(`${f.dir}/${f.file}`)).map((f) => () => typecheck(f)),
];

const started = performance.now();
console.log(
  `Quint specs in ${SPEC_DIRS.filter(selected)
    .map((d) => relative(root, join(specRoot, d)))
    .join(', ')}: ${files.length} files, ${TESTS.length} test modules, ` +
    `${RUNS.length} simulations; seed ${seed}, scale ${scale}, ${jobs} parallel job(s)`,
);
let next = 0;
async function worker() {
  while (next < queue.length) {
    const job = queue[next++];
    const res = await job();
    results.push(res);
    const mark = res.pass ? 'ok ' : 'ERR';
    console.log(`  [${mark}] ${res.kind} ${res.name} (${res.r.seconds.toFixed(1)} s)`);
    if (verbose) console.log(`  quint ${res.r.argv.join(' ')}`);
    if (verbose || (!res.pass && res.kind !== 'run')) console.log(res.r.out);
  }
}
await Promise.all(Array.from({ length: jobs }, worker));
rmSync(tmp, { recursive: true, force: true });

// --- summary ---
const pad = (s, n) => String(s).padEnd(n);
const byKind = (k) => results.filter((x) => x.kind === k);
console.log('\nTypecheck and scenario tests');
for (const x of [...byKind('typecheck'), ...byKind('test')]) {
  console.log(`  ${pad(x.kind, 10)} ${pad(x.name, 30)} ${x.result}${x.detail ? `: ${x.detail}` : ''}`);
}
console.log('\nRandom simulation (quint run --backend=typescript)');
const header = [pad('spec', 50), pad('module', 27), pad('seed', 7), pad('samples x steps', 17), 'result'];
console.log(`  ${header.join(' ')}`);
const runs = RUNS.map((c) => byKind('run').find((x) => x.name === c.name));
for (const x of runs) {
  const row = [pad(x.name, 50), pad(x.module, 27), pad(x.seed, 7), pad(`${x.samples} x ${x.steps}`, 17), x.result];
  console.log(`  ${row.join(' ')}`);
  console.log(`  ${pad('', 50)} invariants: ${x.invariants.join(', ')}`);
  if (x.witnesses.length) console.log(`  ${pad('', 50)} reached in traces: ${x.witnesses.join(', ')}`);
}
console.log('\nCounterexamples found (actions in order; the last one breaks the invariant)');
for (const x of runs.filter((y) => y.trace)) {
  const cmd = x.r.argv.filter((a) => !a.startsWith('--out-itf'));
  console.log(`  ${x.name}: ${x.trace.steps.length} steps  [cd spec/${x.dir} && npx quint ${cmd.join(' ')}]`);
  console.log(`    ${x.trace.steps.join(' ')}`);
  console.log(`    => ${x.trace.final}`);
}
const failed = results.filter((x) => !x.pass);
for (const x of failed.filter((y) => y.kind === 'run' && !verbose)) {
  // Quint prints whole states; keep its messages only (--verbose for all).
  const messages = x.r.out.split('\n').filter((l) => /^[A-Za-z[]/.test(l) && !/^\[State/.test(l));
  console.log(`\n--- quint output of failed check: ${x.name} ---\n${messages.join('\n')}`);
}
const seconds = ((performance.now() - started) / 1000).toFixed(0);
console.log(
  `\n${failed.length === 0 ? 'All spec checks passed' : `${failed.length} spec check(s) FAILED`} in ${seconds} s.`,
);
process.exit(failed.length === 0 ? 0 : 1);
