"""Ray job: ingest the configured sources into documents/ and quarantine/.

    ray job submit --working-dir . -- python jobs/ingest.py --config my-run.yaml
"""

import sys

from politune.command import stage_job

if __name__ == "__main__":
    sys.exit(stage_job("ingest", __doc__))
