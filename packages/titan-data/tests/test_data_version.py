import importlib.metadata

import titan_data


def test_version_matches_the_installed_metadata():
    assert titan_data.__version__ == importlib.metadata.version("titan-data")
