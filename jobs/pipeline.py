"""Ray job: the whole study on one config, skipping the stages already done.

    ray job submit --working-dir . -- python jobs/pipeline.py --config my-run.yaml [--from STAGE | --only STAGE]
"""

import sys

from politune.command import run_command
from politune.console import config_args, job_arguments, print_pipeline
from politune.pipeline import planned_stages, run_pipeline

if __name__ == "__main__":
    args = job_arguments(__doc__, stages=True)
    sys.exit(run_command(lambda cfg: planned_stages(cfg, args.from_stage, args.only),
                         lambda cfg: print_pipeline(run_pipeline(cfg, args.from_stage, args.only),
                                                    config_args(args.config, args.preset, args.set)),
                         args.config, args.preset, args.set, verbose=args.verbose, announce=False, name="run"))
