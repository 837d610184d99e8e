"""Ray job: choose each side's training posts from the annotations.

    ray job submit --working-dir . -- python jobs/select_posts.py --config my-run.yaml
"""

import sys

from politune.command import stage_job

if __name__ == "__main__":
    sys.exit(stage_job("select", __doc__))
