"""Exceptions raised by samadapt.

Every error the library raises on purpose derives from :class:`SamadaptError`, and also from
the builtin that matches its meaning, so ``except ValueError`` keeps working for callers who
do not know about samadapt. The message is one sentence that says what was wrong and how to
fix it; the CLI prints it as it is and exits with code 2.
"""

from __future__ import annotations


class SamadaptError(Exception):
    """Base class of every error samadapt raises on purpose."""


class InputError(SamadaptError, ValueError):
    """A value given by the user is not acceptable (bad prompt, band, option)."""


class InputFileError(SamadaptError, FileNotFoundError):
    """An input file is missing or cannot be read as what it should be."""


class ModelNotFoundError(SamadaptError, FileNotFoundError):
    """A model name or path does not resolve to a usable checkpoint."""


class CheckpointError(SamadaptError, ValueError):
    """A checkpoint exists but is of the wrong family, shape or format."""


class DownloadError(SamadaptError, OSError):
    """A download failed, was refused or did not match its checksum."""


class OutputExistsError(SamadaptError, FileExistsError):
    """An output file exists and overwriting was not asked for."""


class MissingDependencyError(SamadaptError, ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra to install."""


class DiskFullError(SamadaptError, OSError):
    """A disk has too little free space for what a command is about to write."""
