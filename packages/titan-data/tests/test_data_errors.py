"""Every argument mistake of build_dataloader is a DataError naming the argument and what is allowed."""

import pytest
from titan_data import DATASETS, DataError, build_dataloader, load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.mark.parametrize("kw, match", [
    (dict(dataset="bundeld"), "unknown dataset 'bundeld'.*known datasets are bundled, c4, hub, local, tiny, tokens; did you mean 'bundled'"),
    (dict(seq_len=0), "seq_len must be a positive integer, got 0"),
    (dict(seq_len=8.5), "seq_len must be a positive integer, got 8.5"),
    (dict(local_batch_size=-1), "local_batch_size must be a positive integer, got -1"),
    (dict(dp_world_size=0), "dp_world_size must be a positive integer"),
    (dict(dp_rank=2, dp_world_size=2), r"dp_rank must be an integer in \[0, dp_world_size=2\), got 2"),
    (dict(num_workers=-1), "num_workers must be an integer >= 0"),
    (dict(seed=-5), "seed must be an integer >= 0"),
    (dict(mode="fast"), "mode must be one of pretokenized, streaming"),
    (dict(split=""), "split must be a non-empty string"),
    (dict(split="test"), "the tiny corpus has splits train, validation; got split='test'"),
    (dict(on_bad_record="ignore"), "on_bad_record must be one of skip, raise"),
    (dict(dataset_path="x.jsonl"), "dataset 'tiny' takes no dataset_path.*dataset='local'"),
    (dict(dataset="local"), "dataset 'local' needs dataset_path"),
    (dict(dataset="tokens"), "dataset 'tokens' needs dataset_path"),
    (dict(dataset="tokens", dataset_path="/no/such/folder"), "token folder /no/such/folder does not exist"),
    (dict(tokenizer="bundled"), "tokenizer must be a titan_data Tokenizer"),
])
def test_argument_errors(tok, kw, match):
    args = dict(dataset="tiny", tokenizer=tok, seq_len=8, local_batch_size=2) | kw
    with pytest.raises(DataError, match=match):
        build_dataloader(args.pop("dataset"), **args)


def test_data_error_is_a_value_error_and_the_registry_is_described():
    assert issubclass(DataError, ValueError)
    assert set(DATASETS) == {"bundled", "tiny", "c4", "hub", "local", "tokens"}
    for name, spec in DATASETS.items():
        assert spec.name == name and spec.description and spec.default_mode in ("pretokenized", "streaming")
