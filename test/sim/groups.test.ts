/**
 * The deterministic simulator in CI: a few hundred seeds per protocol must
 * find no violation, every mutant must be caught within its seed budget (300,
 * 800 for the rare stale-coordinator write), and a seed must replay exactly.
 */
import { describe, expect, it } from 'vitest';
import { runGroupsSim } from '../../src/sim/groups.js';
import { runSimulation } from '../../src/sim/run.js';
import { MUTANTS, type MutantName } from '../../src/protocol/mutants.js';

const SEEDS = Number(process.env['REBALANCER_SIM_SEEDS'] ?? 200);

describe('group simulation', () => {
  for (const protocol of ['resource-barrier', 'global-barrier'] as const) {
    it(`${protocol}: ${SEEDS} seeds of crashes, pauses, partitions, store faults and churn without a violation`, async () => {
      const s = await runSimulation({ scenario: 'groups', protocol, seeds: SEEDS });
      expect(s.failingSeeds.map((f) => `${f.violation.kind}: ${f.violation.detail} — ${f.replay}`)).toEqual([]);
      expect(s.seeds).toBe(SEEDS);
      expect(s.steps).toBeGreaterThan(SEEDS * 1000);
    }, 600_000);
  }

  /**
   * Seeds each mutant gets. A stale coordinator's write needs a rare coincidence (a write held in flight across a
   * leadership change): measured about 0.6–0.8 % of seeds, before and after members began ending their lost
   * sessions on the server (seeds 1–800: first caught at 23 before, at 432 after; 3 and 4 catches in 301–800).
   */
  const budget = (mutant: MutantName): number => (mutant === 'unguarded-coordinator' ? 800 : 300);

  for (const mutant of Object.keys(MUTANTS) as MutantName[]) {
    it(`catches the mutant ${mutant} within ${budget(mutant)} seeds`, async () => {
      const s = await runSimulation({
        scenario: 'groups',
        protocol: 'resource-barrier',
        seeds: budget(mutant),
        mutant,
        stopOnFailure: true,
      });
      expect(s.firstFailingSeed).not.toBeNull();
    }, 600_000);
  }

  it('clock-rate faults (opt-in): the clock-rate check leaves fewer violating seeds than none, but not none', async () => {
    // A node's clock runs at 0.5, 0.75 or 1.25 of its rate for a while, among all the other faults. The check
    // (keep-alives carry the server's clock) ends the node's sessions within about a TTL after its clock went wrong; a
    // partition or pause inside that TTL still lets it outlive its lease on the server (docs/adr/0011).
    const violating = async (clockRateCheck: boolean): Promise<number> => {
      let n = 0;
      for (let seed = 1; seed <= 40; seed++) {
        const r = await runGroupsSim({ seed, protocol: 'resource-barrier', clockFaults: true, clockRateCheck });
        expect(r.faults['clock-rate'] ?? 0).toBeGreaterThan(0);
        if (r.violations.length > 0) n++;
      }
      return n;
    };
    const checked = await violating(true);
    const unchecked = await violating(false);
    expect(checked).toBeLessThan(unchecked);
  }, 600_000);

  it('replays a seed exactly', async () => {
    const a = await runGroupsSim({ seed: 42, protocol: 'resource-barrier' });
    const b = await runGroupsSim({ seed: 42, protocol: 'resource-barrier' });
    expect(b).toEqual(a);
    const m1 = await runGroupsSim({ seed: 3, protocol: 'resource-barrier', mutant: 'acquire-without-lock' });
    const m2 = await runGroupsSim({ seed: 3, protocol: 'resource-barrier', mutant: 'acquire-without-lock' });
    expect(m2.violations).toEqual(m1.violations);
    expect(m1.violations.length).toBeGreaterThan(0);
  }, 120_000);
});
