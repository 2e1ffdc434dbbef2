"""What tests call, imported as ``from helpers.<module> import ...`` (``tests`` is on the pytest path).

``cli`` runs the command in-process; ``rasters`` writes GeoTIFFs and holds the test CRS;
``realdata`` finds ``../shared/data``; ``training`` generates samples and trains in miniature;
``decoders`` holds a stand-in mask decoder; ``tileserver`` serves XYZ tiles; ``fake_hub`` and
``hf_cache`` stand in for the Hugging Face hub and its cache; ``sam_reference`` and
``sam2_reference`` build the official SAM and SAM 2 code for comparison. Fixtures stay in
``tests/conftest.py``.
"""
