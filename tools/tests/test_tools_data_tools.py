"""tools/train_tokenizer.py and tools/pretokenize.py, run in-process on small local data."""

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_tokenizer_then_pretokenize_with_it(tmp_path, capsys):
    from titan_data import documents, load_tokenizer, open_token_dir

    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"body": d}) + "\n" for d in documents("tiny")))
    out = tmp_path / "tok.tiktoken"
    assert _tool("train_tokenizer").main(["--out", str(out), "--vocab-size", "600", "--dataset", "local",
                                          "--dataset-path", str(data), "--text-field", "body"]) == 0
    assert "= 600 ids" in capsys.readouterr().out
    tok = load_tokenizer(out)
    assert tok.vocab_size == 600
    assert _tool("pretokenize").main(["--out", str(tmp_path / "t"), "--dataset", "local", "--dataset-path", str(data),
                                      "--text-field", "body", "--tokenizer", str(out), "--shard-tokens", "1000"]) == 0
    assert "shard(s)" in capsys.readouterr().out
    store = open_token_dir(tmp_path / "t")
    expected = sum(len(tok.encode(d, bos=True, eos=True)) for d in documents("tiny"))
    assert store.total_tokens == expected and store.fingerprint == tok.fingerprint


def test_tools_report_user_mistakes_without_a_traceback(tmp_path, capsys):
    assert _tool("train_tokenizer").main(["--out", str(tmp_path / "x"), "--dataset", "tiny", "--vocab-size", "10"]) == 2
    assert "error: vocab_size must be an integer >= 512" in capsys.readouterr().err
    assert _tool("pretokenize").main(["--out", str(tmp_path / "y"), "--dataset", "bundeld"]) == 2
    assert "did you mean 'bundled'" in capsys.readouterr().err
