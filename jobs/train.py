"""Ray job: one LoRA adapter a side (DPO or SFT, TRL + PEFT) trained under Ray Train, then registered.

    ray job submit --working-dir . -- python jobs/train.py --config my-run.yaml --side left

Submitting the same job again after it was killed resumes from its last checkpoint.
"""

import argparse

from politune.config import resolve_config
from politune.console import print_train
from politune.train import train_adapters

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config")
    parser.add_argument("--preset")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD.PATH=VALUE")
    parser.add_argument("--side", action="append", choices=["left", "right"],
                        help="repeatable; default: the config's train.sides")
    args = parser.parse_args()
    print_train(train_adapters(resolve_config(args.config, args.preset, args.set), args.side))
