"""Ray job: the whole pipeline on one config.

    ray job submit --working-dir . -- python jobs/pipeline.py --config my-run.yaml
"""

from politune.config import resolve_config
from politune.console import config_args, job_arguments, print_pipeline
from politune.pipeline import run_pipeline

if __name__ == "__main__":
    args = job_arguments(__doc__)
    result = run_pipeline(resolve_config(args.config, args.preset, args.set))
    print_pipeline(result, config_args(args.config, args.preset, args.set))
