"""Ray job: ingest the configured sources into documents/ and quarantine/.

    ray job submit --working-dir . -- python jobs/ingest.py --config my-run.yaml
"""

import sys

from politune.command import run_command
from politune.console import job_arguments, print_ingest
from politune.ingest import ingest_corpus

if __name__ == "__main__":
    args = job_arguments(__doc__)
    sys.exit(run_command(("ingest",), lambda cfg: print_ingest(ingest_corpus(cfg)),
                         args.config, args.preset, args.set, verbose=args.verbose))
