import importlib.metadata

import titan_train


def test_version_matches_the_installed_metadata():
    assert titan_train.__version__ == importlib.metadata.version("titan-train")
