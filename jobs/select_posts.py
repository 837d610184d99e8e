"""Ray job: choose each side's training posts from the annotations.

    ray job submit --working-dir . -- python jobs/select_posts.py --config my-run.yaml
"""

import sys

from politune.command import run_command
from politune.console import job_arguments, print_select
from politune.select import select_posts

if __name__ == "__main__":
    args = job_arguments(__doc__)
    sys.exit(run_command(("select",), lambda cfg: print_select(select_posts(cfg)),
                         args.config, args.preset, args.set, verbose=args.verbose))
