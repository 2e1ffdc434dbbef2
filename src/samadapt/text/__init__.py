"""Text prompts: objects found by name, by an open-vocabulary detector or SAM 3's concept model."""
