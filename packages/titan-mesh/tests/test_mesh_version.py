import importlib.metadata

import titan_mesh


def test_version_matches_the_installed_metadata():
    assert titan_mesh.__version__ == importlib.metadata.version("titan-mesh")
