"""Helpers shared by the tests: a Hugging Face cache laid out as huggingface_hub writes it, a local fake hub."""
