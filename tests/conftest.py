"""Small SAE files in the exact Hub layouts, written by the tests themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saematch.demo import npz_bytes
from saematch.sae import Sae


def random_sae(d: int = 16, F: int = 32, seed: int = 0, d_out: int | None = None) -> Sae:
    g = torch.Generator().manual_seed(seed)
    d_out = d if d_out is None else d_out
    return Sae(
        W_enc=torch.randn(d, F, generator=g) / d**0.5,
        b_enc=0.1 * torch.randn(F, generator=g),
        W_dec=torch.randn(F, d_out, generator=g) / d_out**0.5,
        b_dec=0.1 * torch.randn(d_out, generator=g),
        threshold=torch.rand(F, generator=g) * 0.5 + 0.05,
    )


def gemma_arrays(d: int = 16, F: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    s = random_sae(d, F, seed)
    return {k: getattr(s, k).numpy() for k in ("W_enc", "W_dec", "threshold", "b_enc", "b_dec")}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(npz_bytes(arrays))
    return path


def llama_files(folder: Path, d: int = 16, F: int = 32, seed: int = 0, norm_in: float = 8.0,
                norm_out: float = 8.0, theta: float = 0.3, dtype=torch.float32, **hp_over):
    """Write a Llama Scope SAE folder: hyperparams.json + checkpoints/final.safetensors.

    Decoder columns get non-unit norms so the decoder-norm fold matters.
    """
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "encoder.weight": torch.randn(F, d, generator=g) / d**0.5,
        "encoder.bias": 0.1 * torch.randn(F, generator=g),
        "decoder.weight": torch.randn(d, F, generator=g) * (0.5 + torch.rand(F, generator=g)),
        "decoder.bias": 0.1 * torch.randn(d, generator=g),
    }
    hp = {
        "d_model": d, "d_sae": F, "act_fn": "jumprelu", "jump_relu_threshold": theta,
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": norm_in, "out": norm_out},
        "sparsity_include_decoder_norm": True, "top_k": 50, **hp_over,
    }
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, folder / "checkpoints/final.safetensors")
    (folder / "hyperparams.json").write_text(json.dumps(hp))
    return folder / "checkpoints/final.safetensors", folder / "hyperparams.json", tensors, hp


@pytest.fixture
def npz_path(tmp_path):
    return write_npz(tmp_path / "layer_3/width_16k/average_l0_50/params.npz", gemma_arrays())


@pytest.fixture
def stub():
    """(saematch.steer's judge) An OpenAI-compatible chat endpoint on localhost that answers ``stub.reply`` and records
    each request (path, headers, body)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen, state = [], {"reply": {"behavioral": 4, "coherence": 3}, "status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
            content = state["reply"] if isinstance(state["reply"], str) else json.dumps(state["reply"])
            out = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(state["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"url": f"http://127.0.0.1:{server.server_port}/v1", "seen": seen, "state": state}
    server.shutdown()



# The files that run Snakemake most, longest first: the whole demo and some 45 dry runs; the
# rerun cases' own demo and about 40 runs; the demo locally and again on a real Slurm.
LONGEST = ("test_workflow.py", "test_reruns.py", "test_slurm.py")


def pytest_collection_modifyitems(config, items):
    """The longest files first (LONGEST), then the other files that run Snakemake end to end
    (marker ``workflow``), then files with ``slow`` tests, then the rest, each file kept whole
    and in its own order. ``make test`` hands out one file at a time to each worker in this
    order (``--dist loadfile --no-loadscope-reorder``): started last, a minutes-long workflow
    file left one worker running alone at the end of CI while the other sat idle."""
    rank = {}
    for item in items:
        kind = 1 if item.get_closest_marker("workflow") else 2 if item.get_closest_marker("slow") else 3
        if item.path.name in LONGEST:
            kind = 0
        rank[item.path] = min(rank.get(item.path, 3), kind)
    first = {path: i for i, path in enumerate(dict.fromkeys(item.path for item in items))}
    longest = {name: i for i, name in enumerate(LONGEST)}
    items.sort(key=lambda item: (rank[item.path], longest.get(item.path.name, 0), first[item.path]))
