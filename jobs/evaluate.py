"""Ray job: every model of the run on the compass (the instruments' propositions, the probes, the judge), then
the report under <run>/report.

    ray job submit --working-dir . -- python jobs/evaluate.py --config my-run.yaml

With evaluate.base_url unset, the job starts the run's Serve app, evaluates through it and deletes it after.
"""

import sys

from politune.command import stage_job

if __name__ == "__main__":
    sys.exit(stage_job("evaluate", __doc__))
