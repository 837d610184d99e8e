"""LLM back ends shared by the stages: vLLM and OpenAI-compatible endpoints, both through ray.data.llm.

Each stage keeps its own prompts and parsing; this package only builds the processors."""
