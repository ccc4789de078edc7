#!/usr/bin/env python
"""Download a Hugging Face model's tokenizer, config and/or weights into the layout Titan reads.

    python tools/download_hf_assets.py --repo_id meta-llama/Llama-3.1-8B --assets tokenizer \\
        --hf_token $HF_TOKEN --local_dir ./assets/hf
    # -> ./assets/hf/Llama-3.1-8B/{tokenizer.json, tokenizer_config.json, original/tokenizer.model}
    #    then: titan-train --model.hf_assets_path ./assets/hf/Llama-3.1-8B ...

--assets (repeatable or comma-separated): tokenizer (tokenizer.json, tokenizer_config.json,
special_tokens_map.json, tokenizer.model, original/tokenizer.model), config (config.json,
generation_config.json), weights (*.safetensors + model.safetensors.index.json), all.
Files land in <local_dir>/<repo name>/ with the repo's own sub-paths. --source_dir copies from a
local mirror of the repo (a git clone, a shared drive) instead of the Hub, with the same selection.
Without a network the tool stops within --timeout seconds with a message and exit status 1;
gated repos (Llama) need --hf_token (or HF_TOKEN) of an account that accepted the license.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlparse

ASSETS: dict[str, tuple[str, ...]] = {
    "tokenizer": ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                  "original/tokenizer.model"),
    "config": ("config.json", "generation_config.json"),
    "weights": ("*.safetensors", "model.safetensors.index.json"),
}
REQUIRED = {"tokenizer": ("tokenizer.json", "tokenizer.model", "original/tokenizer.model"),  # any one of these
            "config": ("config.json",), "weights": ("*.safetensors",)}


class DownloadError(Exception):
    """A download that cannot proceed: printed as one message, exit status 1."""


def parse_assets(values: Iterable[str]) -> list[str]:
    names = [v.strip() for value in values for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in (*ASSETS, "all")]
    if unknown:
        raise DownloadError(f"--assets: unknown {unknown}; choose from tokenizer, config, weights, all")
    return list(ASSETS) if "all" in names else list(dict.fromkeys(names))


def select_files(repo_files: Iterable[str], assets: Sequence[str]) -> dict[str, list[str]]:
    """For each asset, the repo files it needs (sorted). An asset none of whose required files
    exist in the repo is an error naming what was looked for."""
    files = sorted(set(repo_files))
    chosen: dict[str, list[str]] = {}
    for asset in assets:
        picked = [f for f in files if any(fnmatch.fnmatchcase(f, pat) and (pat.count("/") == f.count("/"))
                                          for pat in ASSETS[asset])]
        if not any(fnmatch.fnmatchcase(f, pat) for f in picked for pat in REQUIRED[asset]):
            raise DownloadError(f"the repo has no {asset} files (looked for {', '.join(REQUIRED[asset])}; "
                                f"it has {len(files)} files, e.g. {', '.join(files[:6]) or 'none'})")
        chosen[asset] = picked
    return chosen


def target_dir(local_dir: str, repo_id: str) -> Path:
    """<local_dir>/<repo name>: the folder model.hf_assets_path points to."""
    return Path(local_dir).expanduser() / repo_id.rstrip("/").split("/")[-1]


def check_reachable(endpoint: str, timeout: float) -> None:
    """Fail fast (instead of the Hub client's retries) when the Hub cannot be reached."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise DownloadError("HF_HUB_OFFLINE is set: no downloads allowed. Unset it, or copy the files "
                            "from a local mirror with --source_dir")
    url = urlparse(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    # getaddrinfo ignores socket timeouts (a missing DNS server blocks for ~20 s): bound it too
    # (a daemon thread, so a resolver still blocked does not hold up the exit)
    found: list = []
    deadline = time.monotonic() + timeout

    def resolve() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4])
        except OSError as e:
            found.append(e)

    worker = threading.Thread(target=resolve, daemon=True)
    worker.start()
    worker.join(timeout)
    try:
        if not found:
            raise DownloadError(f"cannot resolve {host} within {timeout:g} s (no DNS / no network). Check the "
                                "network or proxy (HTTPS_PROXY), or copy the files from a local mirror with "
                                "--source_dir")
        if isinstance(found[0], OSError):
            raise found[0]
        socket.create_connection(found[0][:2], timeout=max(0.1, deadline - time.monotonic())).close()
    except OSError as e:
        raise DownloadError(f"cannot reach {endpoint} ({host}:{port}) within {timeout:g} s: "
                            f"{e.strerror or e}. Check the network or proxy (HTTPS_PROXY), or copy the "
                            "files from a local mirror with --source_dir") from None


def hub_files(repo_id: str, token: str | None, endpoint: str) -> list[str]:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        return HfApi(endpoint=endpoint).list_repo_files(repo_id, token=token)
    except GatedRepoError:
        raise DownloadError(f"{repo_id} is gated: pass --hf_token (or set HF_TOKEN) of an account that "
                            f"accepted its license at {endpoint}/{repo_id}") from None
    except RepositoryNotFoundError:
        raise DownloadError(f"{repo_id}: no such repo at {endpoint}, or it is private and needs "
                            "--hf_token") from None


def fetch(repo_id: str, files: Sequence[str], dest: Path, *, token: str | None, endpoint: str,
          source_dir: Path | None = None) -> list[Path]:
    """Put each repo file at dest/<its repo path>, from the Hub or a local mirror."""
    out = []
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source_dir is not None:
            shutil.copy2(source_dir / name, target)
        else:
            from huggingface_hub import hf_hub_download

            hf_hub_download(repo_id, name, local_dir=dest, token=token, endpoint=endpoint)
        out.append(target)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo_id", required=True, help="e.g. meta-llama/Llama-3.1-8B")
    ap.add_argument("--assets", action="append", default=None,
                    help="tokenizer, config, weights or all (repeatable / comma-separated; default tokenizer)")
    ap.add_argument("--hf_token", default=None, help="access token (default: $HF_TOKEN)")
    ap.add_argument("--local_dir", default="./assets/hf", help="parent folder (default ./assets/hf)")
    ap.add_argument("--source_dir", help="copy from this local mirror of the repo instead of the Hub")
    ap.add_argument("--endpoint", default=None, help="Hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the Hub (default 10)")
    a = ap.parse_args(argv)
    endpoint = (a.endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    token = a.hf_token or os.environ.get("HF_TOKEN")
    try:
        assets = parse_assets(a.assets or ["tokenizer"])
        if a.source_dir:
            source = Path(a.source_dir).expanduser()
            if not source.is_dir():
                raise DownloadError(f"--source_dir {a.source_dir}: no such folder")
            repo_files = [p.relative_to(source).as_posix() for p in source.rglob("*")
                          if p.is_file() and ".git" not in p.relative_to(source).parts]
        else:
            source = None
            check_reachable(endpoint, a.timeout)
            repo_files = hub_files(a.repo_id, token, endpoint)
        chosen = select_files(repo_files, assets)
        dest = target_dir(a.local_dir, a.repo_id)
        files = [f for fs in chosen.values() for f in fs]
        written = fetch(a.repo_id, files, dest, token=token, endpoint=endpoint, source_dir=source)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, permissions, a network drop mid-download
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # the Hub client's HTTP errors, without its traceback
        if type(e).__module__.split(".")[0] not in ("huggingface_hub", "requests", "httpx", "urllib3"):
            raise
        print(f"error: download from {endpoint} failed: {e}", file=sys.stderr)
        return 1
    for asset, fs in chosen.items():
        print(f"{asset}: {', '.join(fs)}")
    print(f"{len(written)} file(s) in {dest} (use --model.hf_assets_path {dest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
