"""Soak mode of the adversarial end-to-end suite (run it through scripts/soak): the scenarios of
test_adversarial.py in rotation, each round on a fresh broker and database with the next seed and
about --records records, until --minutes have passed; the same generator and invariant checker
(adversary.py). Prints one line per round, and the full report (seed, invariants, worker logs)
of a failing round. Exit status 1 if any round failed.

    scripts/soak --seed 1 --records 20000 --minutes 60
    scripts/soak --scenario churn_long_polls --seed 7 --minutes 30      # churn cycles for the whole feed
"""
import argparse
import os
import sys
import time
import warnings

import adversary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000, help="first round's seed")
    parser.add_argument("--records", type=int, default=10000, help="records per round (about)")
    parser.add_argument("--minutes", type=float, default=30, help="start no new round after this")
    parser.add_argument("--scenario", action="append", choices=sorted(adversary.SCENARIOS),
                        help="only these scenarios (repeatable; default: all, in rotation)")
    parser.add_argument("--keep-going", action="store_true", help="continue after a failed round")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=ResourceWarning)
    os.environ.setdefault("ADV_VERBOSE", "1")

    scenarios = args.scenario or list(adversary.SCENARIOS)
    deadline = time.time() + args.minutes * 60
    failed, rounds = [], 0
    print(f"soak: scenarios {scenarios}, ~{args.records} records per round, first seed {args.seed}, "
          f"{args.minutes} min", flush=True)
    while rounds == 0 or time.time() < deadline:
        name = scenarios[rounds % len(scenarios)]
        seed = args.seed + rounds
        rounds += 1
        extra = {"max_cycles": None} if name == "churn_long_polls" else {}
        print(f"round {rounds}: {name} seed={seed}", flush=True)
        try:
            outcome = adversary.run_named(name, seed=seed, keys=adversary.keys_for(name, args.records),
                                          log=lambda text: print(text, flush=True), **extra)
            print(f"  ok  {outcome.text}", flush=True)
        except adversary.ScenarioFailed as failure:
            failed.append((name, seed))
            print(f"  FAILED{failure.outcome.text}", flush=True)
            if not args.keep_going:
                break
    print(f"soak: {rounds} round(s), {len(failed)} failed" + (f": {failed}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
