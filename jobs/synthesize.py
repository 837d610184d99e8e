"""Ray job: each side's preference pairs, cleaned and split (today: imported, e.g. the released PoliTune sets).

    ray job submit --working-dir . -- python jobs/synthesize.py --config my-run.yaml
"""

from politune.config import resolve_config
from politune.console import job_arguments, print_synthesize
from politune.synthesize import synthesize_preferences

if __name__ == "__main__":
    args = job_arguments(__doc__)
    print_synthesize(synthesize_preferences(resolve_config(args.config, args.preset, args.set)))
