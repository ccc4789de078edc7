#!/usr/bin/env python
"""Generate text from a Titan (DCP) or Hugging Face checkpoint, on CPU, one GPU, or N GPUs with TP.

    python tools/generate.py --checkpoint outputs/llama3_debug/checkpoint --config llama3_debug \\
        --prompt "In the beginning" --max_new_tokens 50 --temperature 0.8 --top_k 50 --seed 0
    python tools/generate.py --hf ./assets/hf/Llama-3.1-8B --prompt_file prompt.txt --top_p 0.9
    torchrun --nproc_per_node=8 tools/generate.py --hf ./assets/hf/Llama-3.1-70B --prompt "..."

--checkpoint: a DCP checkpoint folder (step-N, a model-only export or a full training checkpoint),
or the checkpoint folder holding step-N folders (the newest is used, or --step). The model's shape
and tokenizer come from --config plus any --section.key overrides (as for titan-train).
--hf: a Hugging Face folder (config.json + *.safetensors); shape from its config.json, tokenizer
from the folder unless --tokenizer is given. Under torchrun every rank holds a tensor-parallel
shard (the model's own TP plan); rank 0 prints. Same seed, same tokens, on any number of ranks.
Each new token re-runs the whole sequence (the model has no KV cache): fine for checks and demos.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from titan_models import RunOptions


class GenerateError(ValueError):
    """A bad path or option: printed without a traceback."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0   # 0: greedy (argmax)
    top_k: int | None = None
    top_p: float | None = None


def sample_next(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None) -> int:
    """One token id from float logits [vocab]: greedy at temperature 0, else temperature, top-k and
    top-p (nucleus) filtering, then a draw from `generator`."""
    if s.temperature <= 0 or s.top_k == 1:
        return int(torch.argmax(logits))
    logits = logits / s.temperature
    if s.top_k is not None and s.top_k < logits.numel():
        kth = torch.topk(logits, s.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p is not None and s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first always stays)
        drop = probs.cumsum(-1) - probs >= s.top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@torch.no_grad()
def generate(model: torch.nn.Module, prompt: list[int], max_new_tokens: int, sampling: Sampling, *,
             seed: int = 0, eos_id: int | None = None, device: torch.device | str = "cpu",
             group=None) -> list[int]:
    """Append up to `max_new_tokens` sampled ids to `prompt` (stops after eos_id). With a process
    group (TP), rank 0's token is broadcast so every rank continues the same sequence."""
    import torch.distributed as dist

    generator = torch.Generator().manual_seed(seed)
    tokens = list(prompt)
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([tokens], device=device))[0, -1].float()
        nxt = torch.tensor([sample_next(logits, sampling, generator)], device=device)
        if group is not None:
            dist.broadcast(nxt, group_src=0, group=group)
        tokens.append(int(nxt))
        if eos_id is not None and tokens[-1] == eos_id:
            break
    return tokens


def resolve_checkpoint(path: str, step: int | None) -> Path:
    """A DCP folder: `path` itself, or its step-N child (--step, else the newest)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise GenerateError(f"--checkpoint {path}: no such folder")
    steps = {int(m.group(1)): c for c in p.iterdir() if (m := re.fullmatch(r"step-(\d+)", c.name)) and c.is_dir()}
    if step is not None:
        if step not in steps:
            raise GenerateError(f"--step {step}: {p} has no step-{step} (has: {sorted(steps) or 'none'})")
        return steps[step]
    if steps:
        return steps[max(steps)]
    if not (p / ".metadata").is_file():
        raise GenerateError(f"--checkpoint {path}: neither a DCP checkpoint (no .metadata) nor a folder of step-N")
    return p


def _tp_mesh(world: int, device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world,), mesh_dim_names=("tp",))


def load_model(spec, args, *, device: torch.device, dtype: torch.dtype, checkpoint: Path | None = None,
               hf: Path | None = None, tp_mesh=None) -> torch.nn.Module:
    """Build on meta, shard with the model's TP plan (no sequence/loss parallel), load weights."""
    from titan_ckpt import load_model_weights
    from titan_ckpt.hf import load_hf_weights
    from titan_parallel import apply_tp

    with torch.device("meta"):
        model = spec.build(args)
    if tp_mesh is not None:
        apply_tp(model, tp_mesh, spec.tp_plan(model, sequence_parallel=False, loss_parallel=False))
        model.tie_weights()
    model.to_empty(device=device)
    if hf is not None:
        load_hf_weights(hf, model, spec.state_dict_adapter(args))
    else:
        load_model_weights(checkpoint, model)
    model.to(dtype)
    model.reset_rope()  # the RoPE table is not saved: computed again, in float32
    return model.eval()


def _model_and_tokenizer(a: argparse.Namespace, overrides: list[str]):
    import titan_data
    import titan_models

    if a.hf:
        import json

        hf = Path(a.hf).expanduser()
        if not (hf / "config.json").is_file():
            raise GenerateError(f"--hf {a.hf}: no config.json there (expected a Hugging Face model folder)")
        config = json.loads((hf / "config.json").read_text())
        spec = titan_models.get_model_spec(a.model) if a.model else titan_models.spec_for_hf_config(config)
        args = spec.args_from_hf_config(config)
        tokenizer = titan_data.load_tokenizer(a.tokenizer or hf)
    else:
        from titan_mesh import ParallelDims
        from titan_train.config import build_config
        from titan_train.plan import model_args
        from titan_train.trainer.setup import tokenizer_path

        cfg = build_config((["--config", a.config] if a.config else []) + overrides)
        spec = titan_models.get_model_spec(cfg.model.name)
        tokenizer = titan_data.load_tokenizer(a.tokenizer or tokenizer_path(cfg))
        args = model_args(cfg, spec, tokenizer.vocab_size, ParallelDims(world_size=1))
    return spec, args, tokenizer


def _read_prompt(a: argparse.Namespace) -> str:
    if a.prompt_file:
        try:
            return Path(a.prompt_file).expanduser().read_text()
        except OSError as e:
            raise GenerateError(f"--prompt_file {a.prompt_file}: {e.strerror}") from None
    return a.prompt


def run(a: argparse.Namespace, overrides: list[str]) -> int:
    import torch.distributed as dist
    from titan_mesh import init_distributed

    info = init_distributed(device_type="cuda" if torch.cuda.is_available() else "cpu")
    try:
        prompt_text = _read_prompt(a)
        spec, args, tokenizer = _model_and_tokenizer(a, overrides)
        prompt = tokenizer.encode(prompt_text, bos=True, eos=False)
        # the RoPE table is computed, not loaded: make it long enough for prompt + new tokens
        length = max(args.max_seq_len, len(prompt) + a.max_new_tokens)
        args = spec.with_options(args, RunOptions(max_seq_len=length))
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[
            a.dtype or ("bfloat16" if info.device.type == "cuda" else "float32")]
        mesh = _tp_mesh(info.world_size, info.device) if info.world_size > 1 else None
        ckpt = None if a.hf else resolve_checkpoint(a.checkpoint, a.step)
        model = load_model(spec, args, device=info.device, dtype=dtype, checkpoint=ckpt,
                           hf=Path(a.hf).expanduser() if a.hf else None, tp_mesh=mesh)
        sampling = Sampling(a.temperature, a.top_k, a.top_p)
        t0 = time.perf_counter()
        out = generate(model, prompt, a.max_new_tokens, sampling, seed=a.seed,
                       eos_id=None if a.ignore_eos else tokenizer.eos_id, device=info.device,
                       group=mesh.get_group() if mesh is not None else None)
        elapsed = time.perf_counter() - t0
        new = out[len(prompt):]
        if info.rank == 0:
            print(prompt_text + tokenizer.decode(new))
            print(f"\n[{len(new)} tokens in {elapsed:.2f} s: {len(new) / max(elapsed, 1e-9):.1f} tokens/s; "
                  f"{info.world_size} rank(s) on {info.device.type}; seed {a.seed}]", file=sys.stderr)
            if a.print_ids:
                print(" ".join(map(str, new)), file=sys.stderr)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="DCP checkpoint folder (or the folder of step-N checkpoints)")
    src.add_argument("--hf", help="Hugging Face model folder (config.json + safetensors)")
    ap.add_argument("--step", type=int, help="which step-N under --checkpoint (default: newest)")
    ap.add_argument("--config", help="training config (TOML or shipped name) giving the model and tokenizer")
    ap.add_argument("--model", default=None, help="model family for --hf (default: config.json's model_type)")
    ap.add_argument("--tokenizer", help="tokenizer file or folder (overrides the config's / the HF folder's)")
    prompt = ap.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text")
    prompt.add_argument("--prompt_file", help="file holding the prompt")
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ap.add_argument("--top_k", type=int, help="sample among the k most likely tokens")
    ap.add_argument("--top_p", type=float, help="sample within the smallest set of probability >= p")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), help="default: bfloat16 on GPU, float32 on CPU")
    ap.add_argument("--ignore_eos", action="store_true", help="do not stop at the end-of-text token")
    ap.add_argument("--print_ids", action="store_true", help="also print the new token ids (stderr)")
    a, rest = ap.parse_known_args(argv)
    if a.hf and rest:
        ap.error(f"--section.key overrides apply to --config, not --hf: {' '.join(rest)}")
    for name, ok in (("--max_new_tokens", a.max_new_tokens >= 1), ("--temperature", a.temperature >= 0),
                     ("--top_k", a.top_k is None or a.top_k >= 1),
                     ("--top_p", a.top_p is None or 0 < a.top_p <= 1)):
        if not ok:
            ap.error(f"{name} = {getattr(a, name[2:])} is out of range (max_new_tokens >= 1, temperature >= 0, "
                     "top_k >= 1, 0 < top_p <= 1)")
    return a, rest


def main(argv: Sequence[str] | None = None) -> int:
    a, overrides = parse(list(sys.argv[1:] if argv is None else argv))
    try:
        return run(a, overrides)
    except ValueError as e:  # GenerateError, ConfigError, CheckpointError, DataError, ModelConfigError
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
