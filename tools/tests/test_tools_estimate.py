"""tools/estimate_memory.py: the breakdown, per-GPU verdicts, exit codes and errors."""

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import estimate_memory  # noqa: E402


def test_breakdown_and_verdicts(capsys):
    argv = ["--config", "llama3_70b", "--world_size", "256", "--model.vocab_size", "128256"]
    assert estimate_memory.main(argv) == 0
    out = capsys.readouterr().out
    for word in ("parameters", "optimizer states", "activations", "communication buffers", "FSDP 32 x TP 8"):
        assert word in out
    assert "80 GiB GPU: fits" in out and "192 GiB GPU: fits" in out
    # 70B on one node of 8 (TP 8, no FSDP: full fp32 states per TP shard): exit 1 when a size was asked for
    assert estimate_memory.main(["--config", "llama3_70b", "--world_size", "8", "--gpu_memory", "80"]) == 1
    assert "does NOT fit" in capsys.readouterr().out
    assert estimate_memory.main(["--config", "llama3_8b", "--world_size", "8", "--json", "--gpu_memory", "141"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] == {"141": True} and data["peak_reserved"] < data["total"]


def test_config_mistakes_are_one_line_errors(capsys):
    assert estimate_memory.main(["--config", "llama3_8b", "--world_size", "6",
                                 "--parallelism.tensor_parallel_degree", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "world size" in err and "Traceback" not in err
    assert estimate_memory.main(["--config", "llama3_8b", "--world_size", "8", "--training.local_batchsize", "2"]) == 2
    assert "local_batch_size" in capsys.readouterr().err
    # an error of another package (titan-parallel's TP check on the vocabulary) is one message too
    assert estimate_memory.main(["--config", "llama3_8b", "--world_size", "2", "--parallelism.tensor_parallel_degree",
                                 "2", "--model.vocab_size", "128257"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "128257" in err and "Traceback" not in err
