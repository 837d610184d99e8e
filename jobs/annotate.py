"""Ray job: score every document with the configured LLM (resumes where a killed run stopped).

    ray job submit --working-dir . -- python jobs/annotate.py --config my-run.yaml
"""

from politune.annotate import annotate_documents
from politune.config import resolve_config
from politune.console import job_arguments, print_annotate

if __name__ == "__main__":
    args = job_arguments(__doc__)
    print_annotate(annotate_documents(resolve_config(args.config, args.preset, args.set)))
