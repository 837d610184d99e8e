"""Serve: the base model and every registered adapter behind one OpenAI-compatible Ray Serve endpoint."""
