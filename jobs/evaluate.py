"""Ray job: every model of the run on the compass (the instruments' propositions, the probes, the judge), then
the report under <run>/report.

    ray job submit --working-dir . -- python jobs/evaluate.py --config my-run.yaml

With evaluate.base_url unset, the job starts the run's Serve app, evaluates through it and deletes it after.
"""

import sys

from politune.command import run_command
from politune.console import job_arguments, print_evaluate, print_report
from politune.pipeline import evaluate_and_report


def evaluate(cfg) -> None:
    evaluated, report = evaluate_and_report(cfg)
    print_evaluate(evaluated)
    print_report(report)


if __name__ == "__main__":
    args = job_arguments(__doc__)
    sys.exit(run_command(("evaluate",), evaluate, args.config, args.preset, args.set, verbose=args.verbose))
