"""Ray job: one LoRA adapter a side (DPO or SFT, TRL + PEFT) trained under Ray Train, then registered.

    ray job submit --working-dir . -- python jobs/train.py --config my-run.yaml --side left

Submitting the same job again after it was killed resumes from its last checkpoint.
"""

import sys

from politune.command import stage_job

if __name__ == "__main__":
    sys.exit(stage_job("train", __doc__))
