"""Ray job: the whole pipeline on one config.

    ray job submit --working-dir . -- python jobs/pipeline.py --config my-run.yaml
"""

import sys

from politune.command import run_command
from politune.console import config_args, job_arguments, print_pipeline
from politune.pipeline import run_pipeline
from politune.prepare import pipeline_stages

if __name__ == "__main__":
    args = job_arguments(__doc__)
    sys.exit(run_command(pipeline_stages,
                         lambda cfg: print_pipeline(run_pipeline(cfg), config_args(args.config, args.preset, args.set)),
                         args.config, args.preset, args.set, verbose=args.verbose, announce=False, name="run"))
