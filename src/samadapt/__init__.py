"""samadapt: adapt Segment Anything to remote-sensing and planetary imagery."""

from __future__ import annotations

from samadapt.errors import SamadaptError

__version__ = "0.1.0"
__all__ = ["SamadaptError", "__version__"]
