"""Ray job: each side's preference pairs (written from the selected posts, or imported), cleaned and split.

    ray job submit --working-dir . -- python jobs/synthesize.py --config my-run.yaml
"""

from politune.config import resolve_config
from politune.console import job_arguments, print_synthesize
from politune.synthesize import synthesize_preferences

if __name__ == "__main__":
    args = job_arguments(__doc__)
    print_synthesize(synthesize_preferences(resolve_config(args.config, args.preset, args.set)))
