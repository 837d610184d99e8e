"""Ray job: ingest the configured sources into documents/ and quarantine/.

    ray job submit --working-dir . -- python jobs/ingest.py --config my-run.yaml
"""

from politune.config import resolve_config
from politune.console import job_arguments, print_ingest
from politune.ingest import ingest_corpus

if __name__ == "__main__":
    args = job_arguments(__doc__)
    print_ingest(ingest_corpus(resolve_config(args.config, args.preset, args.set)))
