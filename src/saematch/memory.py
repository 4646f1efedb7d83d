"""Host memory of one pair's match job (load → match_pair → write), the figure the Snakemake
rule requests (workflow/rules/match.smk ``match_mem_mb``) and bench/bench_memory.py compares
with the measured peak RSS (docs/solver.md, "Memory of the match job")."""

from __future__ import annotations

from .solve import LAPJV_MAX_N, choose_solver

HEADROOM = 1.25
BASE = 2**30  # Python, torch, numpy, lapjv/lap and the job's own small arrays
VERDICT_BLOCKS = 2**29  # the streamed verdict's blocks of scores and unit rows


def match_memory_bytes(n_features: int, d_model: int, fmt: str = "llama-scope", solver: str = "auto",
                       dense_max_gb: float = 6.0, k: int = 32, chunk_size: int = 2048, partial: bool = False,
                       projected: bool = False, col_chunk: int = 8192, stored: bool | None = None) -> int:
    """Peak host bytes of the match job for an F × F pair of width d (d_in = d), with headroom.

    ``stored``: the SAEs are held as saematch.sae.StoredSae (None: as load_pair decides).
    Dense path (float32 SAEs): both SAEs and their folds (16·F·d bytes each side), the feature
    vectors X, Y (4·F·(2d+1) each), the float32 cost matrix 4·F² (the partial assignment's
    (2F)² beside it), two chunk_size × F blocks. Sparse path: X and Y are made block by block
    (saematch.fold.FeatureRows) and Llama Scope SAEs beyond lapjv's width are read from their
    files on demand (saematch.sae.StoredSae), so the solve holds Y's float32 unit rows (4·F·p),
    the candidate edges and pricing pools (≈ 64·F·k bytes) and the passes' blocks; the verdict
    then holds both stored SAEs in their file dtype (bf16: 2 bytes per parameter) and streams
    its blocks. Float32 SAEs (Gemma Scope, projected att SAEs) are held throughout.
    """
    F, d = n_features, d_model
    path = choose_solver(F, F, solver, dense_max_gb)
    if path == "dense":
        matrix = 4 * F * F + (4 * (2 * F) ** 2 if partial else 0)
        need = matrix + 48 * F * d + 8 * chunk_size * F
    else:
        if stored is None:  # saematch.load.load_pair's choice
            stored = fmt == "llama-scope" and not projected and F > LAPJV_MAX_N
        p = 2 * d + 1
        solve = 4 * F * p + 64 * F * k + 16 * chunk_size * p + 12 * chunk_size * col_chunk
        verdict = (2 * 2 * F * d * 2 if stored else 0) + VERDICT_BLOCKS
        need = (0 if stored else 2 * 2 * F * d * 4) + max(solve, verdict)
    return int(HEADROOM * (need + BASE))
