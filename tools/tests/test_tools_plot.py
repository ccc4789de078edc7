"""tools/plot_metrics.py on synthetic metrics.jsonl files."""

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import plot_metrics  # noqa: E402


def _run(folder: pathlib.Path, scale: float, steps: int = 30, *, val: bool = False) -> pathlib.Path:
    folder.mkdir(parents=True)
    with open(folder / "metrics.jsonl", "w") as f:
        for step in range(1, steps + 1):
            rec = {"step": step, "loss": scale * 8 / step ** 0.3, "grad_norm": 1 + 1 / step,
                   "tokens_per_second": 1000 * scale, "mfu": 40 + step % 3}
            if val and step % 10 == 0:
                rec["validation_loss"] = rec["loss"] + 0.1
            f.write(json.dumps(rec) + "\n")
        f.write('{"step": 31, "loss": 1.0')  # a run killed mid-write
    return folder


def test_two_runs_overlaid_into_a_png(tmp_path, capsys):
    a, b = _run(tmp_path / "fsdp", 1.0, val=True), _run(tmp_path / "fsdp_tp", 1.1, steps=20)
    out = tmp_path / "cmp.png"
    rc = plot_metrics.main([str(a), str(b / "metrics.jsonl"), "--metrics", "loss,validation_loss,grad_norm,mfu",
                            "--labels", "fsdp,fsdp+tp", "-o", str(out)])
    assert rc == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "skipped 1 line" in captured.err
    records = plot_metrics.read_run(a / "metrics.jsonl")
    assert plot_metrics.series(records, "validation_loss")[0] == [10, 20, 30]


def test_clear_errors(tmp_path, capsys):
    run = _run(tmp_path / "r", 1.0)
    assert plot_metrics.main([str(tmp_path / "nope"), "-o", str(tmp_path / "x.png")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    assert plot_metrics.main([str(run), "--labels", "a,b", "-o", str(tmp_path / "x.png")]) == 2
    assert "1 run(s)" in capsys.readouterr().err
    assert plot_metrics.main([str(run), "--metrics", "los", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'loss'" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()
    # one typo among known names is caught too, not drawn as an empty panel
    assert plot_metrics.main([str(run), "--metrics", "loss,grad_nrom", "-o", str(tmp_path / "x.png")]) == 2
    assert "no run logged grad_nrom; did you mean 'grad_norm'" in capsys.readouterr().err


def test_a_run_saved_for_all_ranks_plots_rank_zero(tmp_path):
    run = _run(tmp_path / "r", 1.0)
    (run / "metrics.jsonl").rename(run / "metrics_rank0.jsonl")
    assert plot_metrics.main([str(run), "-o", str(tmp_path / "r.png")]) == 0
