import importlib.metadata

import titan_models


def test_version_matches_the_installed_metadata():
    assert titan_models.__version__ == importlib.metadata.version("titan-models")
