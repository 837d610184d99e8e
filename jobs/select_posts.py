"""Ray job: choose each side's training posts from the annotations.

    ray job submit --working-dir . -- python jobs/select_posts.py --config my-run.yaml
"""

from politune.config import resolve_config
from politune.console import job_arguments, print_select
from politune.select import select_posts

if __name__ == "__main__":
    args = job_arguments(__doc__)
    print_select(select_posts(resolve_config(args.config, args.preset, args.set)))
