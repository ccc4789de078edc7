"""tools/download_hf_assets.py: which files each asset takes, the folder layout Titan reads (from a
local mirror of a repo), and a fast, clear failure without a network."""

import pathlib
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import download_hf_assets as dl  # noqa: E402

REPO = ["README.md", "LICENSE", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "original/tokenizer.model", "original/params.json",
        "original/consolidated.00.pth", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json"]


def test_select_files_per_asset():
    got = dl.select_files(REPO, ["tokenizer", "config", "weights"])
    assert got["tokenizer"] == ["original/tokenizer.model", "special_tokens_map.json", "tokenizer.json",
                                "tokenizer_config.json"]
    assert got["config"] == ["config.json", "generation_config.json"]
    assert got["weights"] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                              "model.safetensors.index.json"]           # not Meta's original .pth
    assert dl.parse_assets(["all"]) == ["tokenizer", "config", "weights"]
    assert dl.parse_assets(["config,tokenizer", "config"]) == ["config", "tokenizer"]
    with pytest.raises(dl.DownloadError, match="unknown"):
        dl.parse_assets(["tokenzer"])
    with pytest.raises(dl.DownloadError, match="no weights files"):
        dl.select_files(["config.json", "pytorch_model.bin"], ["weights"])


@pytest.fixture()
def mirror(tmp_path):
    """A local copy of a Llama-style repo whose tokenizer is the bundled tiktoken file."""
    from titan_data.tokenizer import BUNDLED_TOKENIZER

    src = tmp_path / "mirror"
    for name in REPO:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text("{}" if name.endswith(".json") else name)
    (src / "original/tokenizer.model").write_bytes(BUNDLED_TOKENIZER.read_bytes())
    (src / "tokenizer.json").unlink()  # tiktoken-only, so the bundled file is what gets loaded
    (src / ".git").mkdir()
    (src / ".git/HEAD").write_text("ref")
    return src


def test_layout_from_a_local_mirror_is_what_titan_reads(mirror, tmp_path, capsys):
    import titan_data

    out = tmp_path / "assets"
    rc = dl.main(["--repo_id", "meta-llama/Llama-3.1-8B", "--assets", "tokenizer,config",
                  "--local_dir", str(out), "--source_dir", str(mirror)])
    assert rc == 0
    dest = out / "Llama-3.1-8B"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "config.json", "generation_config.json", "original/tokenizer.model", "special_tokens_map.json",
        "tokenizer_config.json"]
    assert f"--model.hf_assets_path {dest}" in capsys.readouterr().out
    assert titan_data.load_tokenizer(dest).vocab_size == 2048               # model.hf_assets_path works
    assert dl.main(["--repo_id", "x/Llama-3.1-8B", "--assets", "weights", "--local_dir", str(out),
                    "--source_dir", str(mirror)]) == 0
    assert (dest / "model.safetensors.index.json").is_file() and not (dest / "original/consolidated.00.pth").exists()


def test_offline_fails_fast_with_a_message(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert dl.main(["--repo_id", "meta-llama/Llama-3.1-8B", "--local_dir", str(tmp_path)]) == 1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    monkeypatch.delenv("HF_HUB_OFFLINE")
    t0 = time.perf_counter()
    rc = dl.main(["--repo_id", "meta-llama/Llama-3.1-8B", "--local_dir", str(tmp_path),
                  "--endpoint", "http://127.0.0.1:9", "--timeout", "2"])
    assert rc == 1 and time.perf_counter() - t0 < 5
    err = capsys.readouterr().err
    assert "cannot reach http://127.0.0.1:9" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())                                     # nothing half-written
