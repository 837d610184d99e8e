"""The annotator: how a post is scored for ideology, relevance and quality (prompts.py), read back (parse.py),
stored (schema.py), and run (hf_engine.py: transformers in a Ray Data actor pool; vllm_engine.py: ray.data.llm)."""
