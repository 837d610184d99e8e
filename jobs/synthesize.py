"""Ray job: each side's preference pairs (written from the selected posts, or imported), cleaned and split.

    ray job submit --working-dir . -- python jobs/synthesize.py --config my-run.yaml
"""

import sys

from politune.command import stage_job

if __name__ == "__main__":
    sys.exit(stage_job("synthesize", __doc__))
