"""Ray job: score every document with the configured LLM (resumes where a killed run stopped).

    ray job submit --working-dir . -- python jobs/annotate.py --config my-run.yaml
"""

import sys

from politune.command import stage_job

if __name__ == "__main__":
    sys.exit(stage_job("annotate", __doc__))
