/**
 * The slots simulator in CI: a hundred and more seeds must find no violation
 * (one primary per slot, no release below the replicas it required,
 * convergence after the faults stop), every slots mutant must be caught, and
 * a seed must replay exactly.
 */
import { describe, expect, it } from 'vitest';
import { SLOTS_MUTANTS, type SlotsMutantName } from '../../src/protocol/mutants.js';
import { runSlotsSim } from '../../src/sim/slots.js';
import { runSimulation } from '../../src/sim/run.js';

const SEEDS = Number(process.env['REBALANCER_SIM_SEEDS'] ?? 150);

describe('slots simulation', () => {
  it(`${SEEDS} seeds of crashes, pauses, partitions, store faults, leaves and slow migrations without a violation`, async () => {
    const s = await runSimulation({ scenario: 'slots', protocol: 'resource-barrier', seeds: SEEDS });
    expect(s.failingSeeds.map((f) => `${f.violation.kind}: ${f.violation.detail} — ${f.replay}`)).toEqual([]);
    expect(s.seeds).toBe(SEEDS);
    expect(s.steps).toBeGreaterThan(SEEDS * 1000);
  }, 600_000);

  // slots-release-unconfirmed needs a crash and a leave within one TTL, with quick migrations, in a settled
  // cluster: rare among random faults; the crash-and-leave scenario below is where it is caught.
  const random = (Object.keys(SLOTS_MUTANTS) as SlotsMutantName[]).filter((m) => m !== 'slots-release-unconfirmed');
  for (const mutant of random) {
    it(`catches the mutant ${mutant} within 100 seeds`, async () => {
      const s = await runSimulation({
        scenario: 'slots',
        protocol: 'resource-barrier',
        seeds: 100,
        mutant,
        stopOnFailure: true,
      });
      expect(s.firstFailingSeed).not.toBeNull();
    }, 600_000);
  }

  it('crash of one node and at once a graceful leave of another: no release counts the crashed node', async () => {
    for (let seed = 1; seed <= 20; seed++) {
      const r = await runSlotsSim({ seed, crashAndLeave: true });
      expect(r.faults['crash-and-leave']).toBe(1);
      expect(r.violations).toEqual([]);
    }
  }, 300_000);

  it('catches the mutant slots-release-unconfirmed in the crash-and-leave scenario within 20 seeds', async () => {
    let caught: string | undefined;
    for (let seed = 1; seed <= 20 && caught === undefined; seed++) {
      const r = await runSlotsSim({ seed, crashAndLeave: true, mutant: 'slots-release-unconfirmed' });
      caught = r.violations.find((v) => v.kind === 'release-counted-crashed')?.detail;
    }
    expect(caught).toBeDefined();
  }, 300_000);

  it('replays a seed exactly', async () => {
    const a = await runSlotsSim({ seed: 42 });
    const b = await runSlotsSim({ seed: 42 });
    expect(b).toEqual(a);
    expect(a.writes).toBeGreaterThan(0);
    expect(a.releases).toBeGreaterThan(0);
    const m1 = await runSlotsSim({ seed: 9, mutant: 'slots-primary-without-lock' });
    const m2 = await runSlotsSim({ seed: 9, mutant: 'slots-primary-without-lock' });
    expect(m2.violations).toEqual(m1.violations);
  }, 120_000);
});
