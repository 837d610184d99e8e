"""Ray job: one LoRA adapter a side (DPO or SFT, TRL + PEFT) trained under Ray Train, then registered.

    ray job submit --working-dir . -- python jobs/train.py --config my-run.yaml --side left

Submitting the same job again after it was killed resumes from its last checkpoint.
"""

import sys

from politune.command import run_command
from politune.console import job_arguments, print_train
from politune.train import train_adapters

if __name__ == "__main__":
    args = job_arguments(__doc__, sides=True)
    sys.exit(run_command(("train",), lambda cfg: print_train(train_adapters(cfg, args.side)), args.config,
                         args.preset, args.set, verbose=args.verbose))
