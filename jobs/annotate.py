"""Ray job: score every document with the configured LLM (resumes where a killed run stopped).

    ray job submit --working-dir . -- python jobs/annotate.py --config my-run.yaml
"""

import sys

from politune.annotate import annotate_documents
from politune.command import run_command
from politune.console import job_arguments, print_annotate

if __name__ == "__main__":
    args = job_arguments(__doc__)
    sys.exit(run_command(("annotate",), lambda cfg: print_annotate(annotate_documents(cfg)),
                         args.config, args.preset, args.set, verbose=args.verbose))
