"""A small demo in the exact Gemma Scope Hub layout, with planted cross-layer structure.

Writes, into a local Hugging Face cache (blobs named by sha256, snapshot symlinks, refs/main),
one repo per site holding ``layer_{L}/width_{width}/average_l0_{X}/params.npz`` and a stand-in
model repo (``model.safetensors.index.json`` + shards) holding each layer's
``self_attn.o_proj.weight`` and ``post_attention_layernorm.weight``.

Planted structure, per site (:func:`planted_site`): a share ``persist`` of each layer's
features lives on in the next layer, its directions perturbed to cosines U(0.3, 0.95), then
rescaled by JumpReLU's own symmetry with a per-feature factor c (the layer's growth times a
log-normal jitter of σ = ``jitter``): W_enc·c, b_enc·c, θ·c, W_dec/c, which leaves the SAE's
function unchanged and which folding undoes, so raw parameters see a scale change that folded
ones do not; then permuted. The rest die and fresh features are born in their place, some as
look-alikes of the dying; near-duplicate features make top-1 partners collide.
Attention SAEs are generated in the residual stream and mapped back into z through the
pseudo-inverse of the stand-in (1 + g) ⊙ W_O, so the pipeline's projection recovers them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save as save_safetensors

SITES = ("res", "mlp", "att")


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """np.savez's format, but byte-for-byte reproducible (fixed zip timestamps)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def write_hub_repo(cache_dir: str | Path, repo_id: str, files: dict[str, bytes], commit: str | None = None,
                   repo_type: str = "model") -> str:
    """Write ``files`` (path in repo → bytes) as one commit of a cached Hub model repo.

    Same layout huggingface_hub writes: blobs/<sha256>, snapshots/<commit>/<path> → blob,
    refs/main = commit. Returns the commit hash: ``commit``, or one derived from the content
    (so the demo is reproducible).
    """
    repo_dir = Path(cache_dir) / (f"{repo_type}s--" + repo_id.replace("/", "--"))
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    commit = commit or hashlib.sha1(json.dumps(sorted(digests.items())).encode()).hexdigest()
    for name, data in files.items():
        blob = repo_dir / "blobs" / digests[name]
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            tmp = blob.with_suffix(".incomplete")
            tmp.write_bytes(data)
            os.replace(tmp, blob)
        link = repo_dir / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return commit


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _perturb(dirs: np.ndarray, cos: np.ndarray, rng) -> np.ndarray:
    """Unit vectors at cosine ``cos`` to the unit rows of ``dirs``."""
    noise = rng.standard_normal(dirs.shape)
    noise = _unit(noise - (noise * dirs).sum(1, keepdims=True) * dirs)
    return cos[:, None] * dirs + np.sqrt(1 - cos[:, None] ** 2) * noise


def planted_site(n_layers: int, n_features: int, d: int, persist: float, rng, jitter: float = 1.0,
                 cos: tuple[float, float] = (0.3, 0.95), dup: float = 0.1, distract: float = 0.5,
                 sources: dict[str, list[np.ndarray]] | None = None):
    """Per-layer feature states (residual-space) and the planted map layer L → L+1.

    What real SAEs have, planted: each layer holds near-duplicate features (a share ``dup``
    at decoder cosine 0.8–0.95 to another feature, so Feature Flow's top-1 can collide); a
    share ``persist`` of each layer's features lives on, its decoder at cosine U(``cos``) to
    its old one and its encoder at about the same cosine to its old encoder, rescaled by
    JumpReLU's own symmetry (W_enc·c, b_enc·c, θ·c, W_dec/c with c the layer's threshold growth
    1.15 times a log-normal jitter of σ = ``jitter``); the rest die, and a share ``distract``
    of the dying get a born look-alike in the next layer (decoder at cosine 0.3–0.55, an
    unrelated encoder): a plausible nearest neighbour that is not the same feature.

    ``sources`` (the residual site: module → per-layer decoder directions of the MLP and
    attention SAEs, (F, d) each) plants Feature Flow's origins: of the other born features of
    layer L ≥ 1, a third are born in the MLP (decoder at cosine U(0.6, 0.95) to a random MLP
    feature of layer L), a third in attention, a third from nowhere.

    Returns a list of dicts (dec_dir (F, d), enc_dir (F, d), enc_gain, dec_gain, threshold, b_enc),
    a list of n_layers − 1 int arrays planted[i] = successor of feature i in L+1 or −1, and per
    layer L ≥ 1 a dict origin (F,) str ("res": persisting from L − 1, "mlp", "att" with
    ``sources``, "none", "lookalike"), source (F,) int64 (the MLP / attention feature, else −1)
    and res_source (F,) int64 (the feature of layer L − 1 it persists from, else −1).
    """
    F = n_features

    def fresh(n, scale):
        dec = _unit(rng.standard_normal((n, d)))
        k = int(dup * n)
        pick = rng.permutation(n)
        dec[pick[k:2 * k]] = _perturb(dec[pick[:k]], rng.uniform(0.8, 0.95, k), rng)  # near-duplicates
        return {
            "dec_dir": dec,
            "enc_dir": _perturb(dec, rng.uniform(0.5, 0.9, n), rng),
            "threshold": scale * rng.lognormal(0.0, 0.3, n),
            "enc_gain": rng.lognormal(0.0, 0.2, n),
            "dec_gain": rng.lognormal(0.0, 0.2, n),
            "b_enc": -0.1 * scale * rng.random(n),
        }

    layers, planted, origins = [fresh(F, 1.0)], [], []
    for L in range(1, n_layers):
        prev, growth = layers[-1], 1.15**L
        keep = rng.random(F) < persist
        nxt = fresh(F, growth)
        k = int(keep.sum())
        c_dec = rng.uniform(*cos, k)
        nxt["dec_dir"][keep] = _perturb(prev["dec_dir"][keep], c_dec, rng)
        c_enc = np.clip(c_dec + 0.05 * rng.standard_normal(k), 0.2, 0.98)
        nxt["enc_dir"][keep] = _perturb(prev["enc_dir"][keep], c_enc, rng)
        c = 1.15 * rng.lognormal(0.0, jitter, k)  # the JumpReLU scale symmetry, per feature
        nxt["threshold"][keep] = prev["threshold"][keep] * c
        nxt["enc_gain"][keep] = prev["enc_gain"][keep] * c
        nxt["b_enc"][keep] = prev["b_enc"][keep] * c
        nxt["dec_gain"][keep] = prev["dec_gain"][keep] / c
        dying = np.flatnonzero(~keep)
        near = dying[rng.random(len(dying)) < distract]  # born look-alikes of dying features
        nxt["dec_dir"][near] = _perturb(prev["dec_dir"][near], rng.uniform(0.3, 0.55, len(near)), rng)
        nxt["enc_dir"][near] = _perturb(_unit(rng.standard_normal((len(near), d))),
                                        rng.uniform(0.5, 0.9, len(near)), rng)
        origin = np.where(keep, "res", "none").astype(object)
        origin[near] = "lookalike"
        source = np.full(F, -1, np.int64)
        if sources:
            born = np.setdiff1d(dying, near)
            which = rng.integers(0, 3, len(born))  # 0: MLP, 1: attention, 2: nowhere
            for code, module in enumerate(("mlp", "att")):
                slots = born[which == code]
                j = rng.choice(F, len(slots), replace=False)
                nxt["dec_dir"][slots] = _perturb(sources[module][L][j], rng.uniform(0.6, 0.95, len(slots)), rng)
                nxt["enc_dir"][slots] = _perturb(nxt["dec_dir"][slots], rng.uniform(0.5, 0.9, len(slots)), rng)
                origin[slots], source[slots] = module, j
        order = rng.permutation(F)  # new position p holds old-index-order feature order[p]
        for key in nxt:
            nxt[key] = nxt[key][order]
        position = np.empty(F, dtype=np.int64)
        position[order] = np.arange(F)
        planted.append(np.where(keep, position, -1).astype(np.int32))
        res_source = np.where(keep, np.arange(F), -1)  # slot i holds layer L − 1's feature i where it persists
        origins.append({"origin": origin[order].astype("<U12"), "source": source[order], "res_source": res_source[order]})
        layers.append(nxt)
    return layers, planted, origins


def state_sae(st: dict):
    """One layer's planted state (:func:`planted_site`) as an in-memory Sae, in residual space."""
    import torch

    from .sae import Sae

    t = {"W_enc": (st["enc_dir"] * st["enc_gain"][:, None]).T, "W_dec": st["dec_dir"] * st["dec_gain"][:, None],
         "b_enc": st["b_enc"], "threshold": st["threshold"], "b_dec": np.zeros(st["dec_dir"].shape[1])}
    return Sae(**{k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in t.items()})


def planted_pair(F: int, d: int, persist: float, seed: int, cos: tuple[float, float] = (0.3, 0.95),
                 unrelated: bool = False):
    """Two layers of :func:`planted_site` as Saes, and planted[i] (src i's successor or −1);
    ``unrelated``: nothing persists and no look-alikes (independently drawn layers)."""
    rng = np.random.default_rng(seed)
    layers, planted, _ = planted_site(2, F, d, 0.0 if unrelated else persist, rng, cos=cos,
                                      distract=0.0 if unrelated else 0.5)
    return state_sae(layers[0]), state_sae(layers[1]), planted[0].astype(np.int64)


def make_demo(
    cache_dir: str | Path,
    model_repo: str,
    site_repos: dict[str, str],
    paths: dict[str, list[list[str]]],
    n_layers: int,
    d_model: int,
    d_att: int,
    n_features: int,
    persist: float = 0.75,
    seed: int = 0,
    jitter: float = 1.0,
) -> tuple[dict, dict[str, list[np.ndarray]]]:
    """Write the demo repos; return (manifest, planted maps per site).

    ``paths[site][L]`` lists the params.npz paths to write for layer L: the first is the
    nominal SAE, each further one the same features at a lower threshold (another L0).
    """
    rng = np.random.default_rng(seed)
    o_proj = rng.standard_normal((n_layers, d_model, d_att)).astype(np.float32) / np.sqrt(d_att)
    gain = (0.3 * rng.standard_normal((n_layers, d_model))).astype(np.float32)
    manifest, truth, states, origins = {"repos": {}}, {}, {}, []
    for site in sorted(site_repos, key=lambda s: s == "res"):  # res last: its origins come from the others
        sources = {m: [st["dec_dir"] for st in states[m]] for m in ("mlp", "att")} \
            if site == "res" and {"mlp", "att"} <= set(states) else None
        states[site], truth[site], site_origins = planted_site(n_layers, n_features, d_model, persist, rng, jitter,
                                                               sources=sources)
        if sources:
            origins = site_origins
            processed_by_modules(states, truth, origins, rng)
    for site, repo in site_repos.items():
        layers = states[site]
        files = {}
        for L, st in enumerate(layers):
            dec, enc = st["dec_dir"], st["enc_dir"]
            if site == "att":  # back into z through T = diag(1 + g) W_O (d_model, d_att)
                to_resid = o_proj[L] * (1.0 + gain[L])[:, None]
                # decoders are vectors: solve T u = w; encoders are functionals: e_z = Tᵀ e, read z as e reads T z
                dec, enc = dec @ np.linalg.pinv(to_resid).T, _unit(enc @ to_resid)
            d_in = dec.shape[1]
            for k, path in enumerate(paths[site][L]):
                files[path] = npz_bytes({
                    "W_enc": (enc * st["enc_gain"][:, None]).T.astype(np.float32),  # (d_in, F)
                    "W_dec": (dec * st["dec_gain"][:, None]).astype(np.float32),  # (F, d_in)
                    "threshold": (st["threshold"] * 0.5**k).astype(np.float32),
                    "b_enc": st["b_enc"].astype(np.float32),
                    "b_dec": (0.01 * np.ones(d_in)).astype(np.float32),
                })
        manifest["repos"][repo] = {"commit": write_hub_repo(cache_dir, repo, files), "files": sorted(files)}

    # Stand-in model: two shards, layers split between them, plus the index.
    shards = {}
    weight_map = {}
    half = (n_layers + 1) // 2
    for L in range(n_layers):
        shard = f"model-0000{1 if L < half else 2}-of-00002.safetensors"
        for key, value in ((f"model.layers.{L}.self_attn.o_proj.weight", o_proj[L]),
                           (f"model.layers.{L}.post_attention_layernorm.weight", gain[L])):
            shards.setdefault(shard, {})[key] = np.ascontiguousarray(value)
            weight_map[key] = shard
    files = {name: save_safetensors(t) for name, t in shards.items()}
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": sum(len(b) for b in files.values())}, "weight_map": weight_map},
        indent=2, sort_keys=True).encode()
    manifest["repos"][model_repo] = {"commit": write_hub_repo(cache_dir, model_repo, files), "files": sorted(files)}
    return manifest, truth, origins


def processed_by_modules(states: dict, truth: dict, origins: list[dict], rng, share: float = 0.2) -> None:
    """Feature Flow's case B, planted: a share of the persisting residual features of each layer
    L ≥ 1 also gets a twin in that layer's MLP or attention SAE (its decoder at cosine U(0.6,
    0.95) to the residual one), taken from the module's features that are born at L and die
    after it, so no planted match of that site changes. In place; origins[L − 1] says so."""
    F = len(origins[0]["origin"])
    for L in range(1, len(states["res"])):
        o = origins[L - 1]
        persisting = np.flatnonzero(o["origin"] == "res")
        chosen = persisting[rng.random(len(persisting)) < share]
        modules = rng.integers(0, 2, len(chosen))
        for code, module in enumerate(("mlp", "att")):
            born = np.setdiff1d(np.arange(F), truth[module][L - 1])
            dies = truth[module][L] < 0 if L < len(truth[module]) else np.ones(F, bool)
            free = rng.permutation(np.intersect1d(born, np.flatnonzero(dies)))
            rows = chosen[modules == code][:len(free)]
            j = free[:len(rows)]
            st = states[module][L]
            st["dec_dir"][j] = _perturb(states["res"][L]["dec_dir"][rows], rng.uniform(0.6, 0.95, len(rows)), rng)
            st["enc_dir"][j] = _perturb(st["dec_dir"][j], rng.uniform(0.5, 0.9, len(rows)), rng)
            o["origin"][rows], o["source"][rows] = f"res+{module}", j
