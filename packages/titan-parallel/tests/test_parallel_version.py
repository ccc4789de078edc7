import importlib.metadata

import titan_parallel


def test_version_matches_the_installed_metadata():
    assert titan_parallel.__version__ == importlib.metadata.version("titan-parallel")
