"""Ray job: each side's preference pairs (written from the selected posts, or imported), cleaned and split.

    ray job submit --working-dir . -- python jobs/synthesize.py --config my-run.yaml
"""

import sys

from politune.command import run_command
from politune.console import job_arguments, print_synthesize
from politune.synthesize import synthesize_preferences

if __name__ == "__main__":
    args = job_arguments(__doc__)
    sys.exit(run_command(("synthesize",), lambda cfg: print_synthesize(synthesize_preferences(cfg)),
                         args.config, args.preset, args.set, verbose=args.verbose))
