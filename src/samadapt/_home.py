"""Where samadapt keeps its files: ``$SAMADAPT_HOME``, by default ``~/.cache/samadapt``."""

from __future__ import annotations

import os
from pathlib import Path


def samadapt_home() -> Path:
    """Return the root folder for downloaded models and cached embeddings.

    The folder is not created here; callers create the subfolder they write to.
    """
    env = os.environ.get("SAMADAPT_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "samadapt"


def models_dir() -> Path:
    """Folder holding downloaded and converted checkpoints."""
    return samadapt_home() / "models"


def embeddings_dir() -> Path:
    """Folder holding the on-disk embedding cache."""
    return samadapt_home() / "embeddings"
