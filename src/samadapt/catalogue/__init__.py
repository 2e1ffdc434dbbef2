"""Object catalogues: per-object measures on the body's ellipsoid and size-frequency tables.

See :func:`samadapt.catalogue.build.write_catalogue` (the ``samadapt objects`` command).
"""
