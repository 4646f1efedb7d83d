"""The run's selection and names: config values from the command line, variants, result paths.

Torch-free: the Snakefile imports it at parse time. Everything here is a plain function over
the config dict, tested without Snakemake (tests/test_config.py).

A *variant* is one choice of SAEs and match options for a model. Its results live in
``results/model={model}/variant={variant}/``, so two variants never share a file. The name is
the catalog's width plus one part per deviation from the catalog's SAEs or from the default
match options (``16k``, ``16k_nofold``, ``16k_res-L20-l0-41``, ``8x``, ``32x``), or the name
given in ``config["variant"]``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import posixpath
import re
from contextlib import contextmanager
from pathlib import Path

from .errors import SaeError

SITES = ("res", "mlp", "att")
SITE_ALIASES = {"R": "res", "M": "mlp", "A": "att"}  # Llama Scope's names for its sites
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # a path segment: no '/', '=', leading '.'
# the match options that change the results (which features match, and the verdict)
RESULT_OPTIONS = ("fold", "weights", "partial", "cut", "null_rows", "null_draws")
DEFAULT_OPTIONS = {"fold": True, "weights": "enc+dec+benc", "partial": False, "cut": 0.5, "null_rows": 1024,
                   "null_draws": 2}

# saematch.flow's defaults: Feature Flow's cuts t(R) = 0.5 (App. B.2, the residual chain) and
# t(M) = 0.25 (Table 5's graph)
DEFAULT_FLOW = {"top_k": 5, "high": {"res": 0.5, "mlp": 0.25, "att": 0.25}}


class ConfigError(SaeError):
    """A config value that cannot work; the message names the key."""


@contextmanager
def stop_in_one_line():
    """Around the workflow's parse-time checks: a ConfigError ends the run with its message
    alone (exit status 1), not under Snakemake's "ConfigError in file …" header and code frames."""
    try:
        yield
    except ConfigError as err:
        raise SystemExit(str(err)) from None


# --- command-line values ----------------------------------------------------------------------

_TRUE, _FALSE = {"true", "yes", "on"}, {"false", "no", "off"}


def _convert(value, types: list[str]):
    """A string from ``--config`` as the first JSON-schema type it parses as; else unchanged."""
    if not isinstance(value, str):
        return value
    for t in types:
        low = value.strip().lower()
        if t == "boolean" and low in _TRUE | _FALSE:
            return low in _TRUE
        if t == "integer" and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        if t == "number":
            try:
                return float(value)
            except ValueError:
                pass
        if t == "null" and low in ("null", "none", "~"):
            return None
        if t == "string":
            return value
    return value


def _types(schema: dict) -> list[str]:
    t = schema.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def coerce(value, schema: dict, root: dict | None = None):
    """``value`` with every string that the schema types as boolean/integer/number converted.

    Snakemake hands ``--config 'match={fold: false, k: 8}'`` over as strings; the schema says
    what each key holds. Objects and arrays are walked; ``oneOf`` branches are tried in order.
    """
    root = schema if root is None else root
    schema = _resolve(schema, root)
    for branch in schema.get("oneOf", schema.get("anyOf", [])):
        converted = coerce(value, branch, root)
        if converted is not value:
            return converted
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        out = {}
        for k, v in value.items():
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            out[k] = coerce(v, sub, root) if sub is not None else v
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [coerce(v, schema["items"], root) for v in value]
    if isinstance(value, str):
        types = _types(schema)
        if "enum" in schema and value not in schema["enum"]:
            for candidate in schema["enum"]:  # an enum of booleans or numbers
                if str(candidate).lower() == value.strip().lower():
                    return candidate
        return _convert(value, [t for t in types if t != "string"] + (["string"] if "string" in types else []))
    return value


def normalise(config: dict) -> dict:
    """Site aliases (R/M/A → res/mlp/att) and layers as ints; the rest as given."""
    config = dict(config)
    config["sites"] = [SITE_ALIASES.get(s, s) if isinstance(s, str) else s for s in config["sites"]]
    if config["layers"] != "all":
        layers = config["layers"] if isinstance(config["layers"], list) else [config["layers"]]
        try:
            config["layers"] = [int(L) for L in layers]
        except (TypeError, ValueError):
            raise ConfigError(f"config: layers must be 'all' or a list of layer numbers, got {config['layers']!r}") from None
    return config


# --- the selection ------------------------------------------------------------------------------

def selected_layers(config: dict, model: str) -> list[int]:
    n = config["catalog"][model]["n_layers"]
    return list(range(n)) if config["layers"] == "all" else sorted(set(config["layers"]))


def pair_layers(config: dict, model: str) -> list[int]:
    """Source layers L of the pairs (L, L+1) to match: both layers selected."""
    layers = set(selected_layers(config, model))
    return [L for L in sorted(layers) if L + 1 in layers]


def flow_modules(config: dict, model: str, layer: int) -> dict[str, int]:
    """Feature Flow's predecessors of residual layer ``layer`` in this selection: module → the
    layer of its SAE (res: L − 1; mlp, att: L). Empty unless res and the layer are selected."""
    return predecessor_modules(config["sites"], selected_layers(config, model), layer)


def predecessor_modules(sites, layers, layer: int) -> dict[str, int]:
    """:func:`flow_modules` of a selection given as its sites and layers."""
    layers = set(layers)
    if "res" not in sites or layer not in layers:
        return {}
    out = {"res": layer - 1} if layer - 1 in layers else {}
    out.update({m: layer for m in ("mlp", "att") if m in sites})
    return out


def flow_layers(config: dict, model: str) -> list[int]:
    """Residual layers with at least one predecessor module selected."""
    return [L for L in selected_layers(config, model) if flow_modules(config, model, L)]


def check_selection(config: dict) -> None:
    """Unknown model, site or layer, or a selection with no pair: ConfigError before any job."""
    catalog = config["catalog"]
    if config["layers"] != "all" and len(set(config["layers"])) < 2:
        raise ConfigError(f"config: layers={config['layers']}: a pair needs two consecutive layers "
                          "(e.g. layers=[3,4]); use layers=all for every pair")
    for model in config["models"]:
        if model not in catalog:
            raise ConfigError(f"config: unknown model {model!r}; known models: {', '.join(sorted(catalog))}")
        for site in config["sites"]:
            if site not in catalog[model]["sites"]:
                raise ConfigError(f"config: model {model!r} has no site {site!r}; it has "
                                  f"{', '.join(catalog[model]['sites'])} (Llama Scope's R, M, A are res, mlp, att)")
        n = catalog[model]["n_layers"]
        if config["layers"] != "all":
            bad = [L for L in config["layers"] if not 0 <= L < n]
            if bad:
                raise ConfigError(f"config: model {model!r} has layers 0–{n - 1}; unknown layer(s) {bad}")
        if not pair_layers(config, model):
            raise ConfigError(f"config: layers={config['layers']} contain no consecutive pair (L, L+1) for "
                              f"model {model!r}: nothing to match. List both layers of a pair, e.g. "
                              f"layers=[{config['layers'][0]},{config['layers'][0] + 1}]")


def layer_runs(layers) -> list[list[int]]:
    """Runs of consecutive layers: [3, 5, 6, 7] → [[3], [5, 6, 7]]."""
    runs = []
    for L in sorted(set(layers)):
        if runs and L == runs[-1][-1] + 1:
            runs[-1].append(L)
        else:
            runs.append([L])
    return runs


def layers_label(layers: list[int]) -> str:
    """Compact name of a set of layers: [0..25] → 'L0-25', [3, 5, 6, 7] → 'L3_5-7'."""
    return "L" + "_".join(f"{r[0]}" if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in layer_runs(layers))


def selection_label(config: dict, model: str) -> str:
    """The name of a summary: its sites and layers, e.g. 'res+mlp+att.L0-25', 'res.L10-12'."""
    sites = [s for s in SITES if s in config["sites"]]
    return "+".join(sites) + "." + layers_label(selected_layers(config, model))


# --- variants ---------------------------------------------------------------------------------

def site_options(config: dict, model: str, site: str) -> dict:
    """config["match"] with this site's per_site overrides; projected att sites match on 'dec'."""
    opts = {k: v for k, v in config["match"].items() if k != "per_site"}
    opts.update(config["match"].get("per_site", {}).get(site, {}))
    if config["catalog"][model]["sites"][site].get("project_att", False):
        opts["weights"] = "dec"
    return opts


def _short_hash(value) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:6]


def _option_parts(opts: dict, default: dict) -> list[str]:
    parts = []
    if opts["fold"] != default["fold"]:
        parts.append("fold" if opts["fold"] else "nofold")
    if opts["weights"] != default["weights"]:
        parts.append("w-" + opts["weights"])
    if opts["partial"] != default["partial"]:
        parts.append("partial" if opts["partial"] else "full")
    if opts["cut"] != default["cut"]:
        parts.append(f"cut-{opts['cut']:g}")
    if (opts["null_rows"], opts["null_draws"]) != (default["null_rows"], default["null_draws"]):
        parts.append(f"null-{opts['null_rows']}x{opts['null_draws']}")
    return parts


def variant_name(config: dict, model: str) -> str:
    """This run's variant of ``model``: ``config['variant']`` or a name from what deviates.

    Parts: the width; per site and layer override in ``per_layer`` (l0 by value, other keys
    by a short hash); the match options that change results (fold, weights, ...) where they
    differ from the defaults (globally, or per site); the flow options (``flow-k10``,
    ``flow-high-<hash>``) where they differ.
    """
    if config.get("variant"):
        return config["variant"]
    entry = config["catalog"][model]
    parts = [entry["width"]]
    for site, site_cfg in entry["sites"].items():
        for L, over in sorted(site_cfg.get("per_layer", {}).items(), key=lambda kv: int(kv[0])):
            for key, value in sorted(over.items()):
                tail = str(value) if key == "l0" and NAME.match(str(value)) else _short_hash(value)
                parts.append(f"{site}-L{int(L)}-{key}-{tail}")
    global_opts = {k: config["match"][k] for k in RESULT_OPTIONS}
    parts += _option_parts(global_opts, DEFAULT_OPTIONS)
    for site in entry["sites"]:
        base = dict(global_opts)
        if entry["sites"][site].get("project_att", False):
            base["weights"] = "dec"
        parts += [f"{site}-{p}" for p in _option_parts(site_options(config, model, site), base)]
    flow = config.get("flow", DEFAULT_FLOW)
    if flow["top_k"] != DEFAULT_FLOW["top_k"]:
        parts.append(f"flow-k{flow['top_k']}")
    if flow["high"] != DEFAULT_FLOW["high"]:
        parts.append(f"flow-high-{_short_hash(flow['high'])}")
    if flow.get("per_layer"):
        parts.append(f"flow-layers-{_short_hash({str(k): v for k, v in flow['per_layer'].items()})}")
    name = "_".join(parts)
    if not NAME.match(name):
        raise ConfigError(f"config: variant name {name!r} of model {model!r} is not a safe folder name; "
                          "set one with --config variant=NAME")
    return name


# --- paths made from config values --------------------------------------------------------------

def fill(template: str, fields: dict, key: str, sources: dict | None = None) -> str:
    """``template`` with ``fields`` filled in, checked as a path that stays inside its folder.

    The one check of every path made from a config value (SAE files, repo ids, revisions,
    Neuronpedia sets, the demo's folders): relative, POSIX, no '..' or '.' segment, no empty
    segment, no backslash or control character. ``key`` names the template in messages;
    ``sources`` (field → config key) names the value instead where the field's value is what
    breaks the path. Fields that are None are left out. Raises ConfigError, one line.
    """
    fields = {name: value for name, value in fields.items() if value is not None}
    try:
        path = template.format(**fields)
    except KeyError as exc:
        raise ConfigError(f'config: {key}: unknown field {{{exc.args[0]}}} in "{template}"; '
                          f"fields: {', '.join(fields) or 'none'}") from None
    except (ValueError, IndexError, AttributeError, TypeError) as exc:
        raise ConfigError(f'config: {key}: "{template}" is not a template ({exc}); '
                          f"fields: {', '.join(fields) or 'none'}") from None
    segments = path.split("/")
    if not path:
        problem = "a path may not be empty"
    elif "\\" in path:
        problem = "a path may not hold a backslash"
    elif any(ord(c) < 32 or ord(c) == 127 for c in path):
        problem = "a path may not hold a control character"
    elif path.startswith("/"):
        problem = "a path must be relative (no leading '/')"
    elif ".." in segments:
        problem = "a path may not leave its folder ('..')"
    elif "" in segments:
        problem = "a path may not have an empty segment ('//' or a trailing '/')"
    elif "." in segments:
        problem = "a path may not have a '.' segment"
    else:
        return path
    culprit = next((sources[name] for name in (sources or {})
                    if name in fields and f"{{{name}}}" in template and not NAME.match(str(fields[name]))), key)
    shown = path.encode("unicode_escape").decode("ascii") if problem.endswith("control character") else path
    raise ConfigError(f'config: {culprit} → "{shown}": {problem}')


# --- downloads ---------------------------------------------------------------------------------

def pointer_path(spec: dict) -> str:
    """Where a download's pointer lives: named by repo, revision and the SAE's files, so each
    SAE has one pointer, shared by every variant that uses it."""
    repo = spec["repo_id"].replace("/", "--")
    if spec["format"] == "model":
        return f"resources/hub/model/{repo}/{spec['revision']}.json"
    if spec["format"] == "dataset":
        return f"resources/hub/dataset/{repo}/{spec['revision']}/{spec['files']['data']}.json"
    files = sorted(spec["files"].values())
    key = files[0] if len(files) == 1 else posixpath.commonpath(files) or "+".join(files)
    return f"resources/hub/sae/{repo}/{spec['revision']}/{key}.json"


# --- never overwrite ----------------------------------------------------------------------------

def sae_identity(pointer_or_spec: dict) -> dict:
    """What identifies an SAE: format, repo, requested revision and file per role."""
    files = pointer_or_spec["files"]
    return {
        "format": pointer_or_spec.get("format"),
        "repo_id": pointer_or_spec["repo_id"],
        "revision": pointer_or_spec["revision"],
        "files": {role: f["filename"] if isinstance(f, dict) else f for role, f in files.items()},
    }


def describe_change(provenance: dict, expected: dict) -> str | None:
    """How the planned pair differs from the one already written (None: same SAEs and options).

    ``expected``: {"src": spec, "dst": spec, "options": {...}} with specs as in the config.
    """
    changes = []
    for side in ("src", "dst"):
        old, new = sae_identity(provenance[side]), sae_identity(expected[side])
        for key in ("format", "repo_id", "revision", "files"):
            if old[key] != new[key] and not (key == "format" and old[key] is None):
                changes.append(f"{side} {key} {old[key]} → {new[key]}")
    for key in RESULT_OPTIONS:  # an option older results predate had its default then
        old = provenance.get("options", {}).get(key, DEFAULT_OPTIONS[key])
        new = expected["options"].get(key, DEFAULT_OPTIONS[key])
        if old != new:
            changes.append(f"match.{key} {old} → {new}")
    return "; ".join(changes) or None


# --- evaluation on the model's activations (saematch.evaluate) -------------------------------

# what a run reads and how much (a change names a new data folder, so no result is overwritten)
DATA_OPTIONS = ("n_tokens", "loss_tokens", "context")
DEFAULT_EVALUATE = {"models": [], "data": None, "n_tokens": 1_000_000, "loss_tokens": 100_000, "context": 1024,
                    "batch_size": 8, "device": "auto", "dtype": "auto", "top_k": 5, "min_active": 10,
                    "corr_level": 0.5, "dense_max_gb": "auto"}


def evaluate_models(config: dict) -> list[str]:
    """The run's models that evaluate.models asks to check against their activations."""
    wanted = config.get("evaluate", DEFAULT_EVALUATE).get("models", [])
    return [m for m in config["models"] if m in wanted]


def evaluate_options(config: dict, model: str) -> dict:
    """evaluate.* with the catalog entry's own ``evaluate`` overrides, and the text sample: the
    run's evaluate.data or, where that is null, the catalog's ``model.data``."""
    opts = {**DEFAULT_EVALUATE, **config.get("evaluate", {})}
    opts.update(config["catalog"][model].get("evaluate", {}))
    opts.pop("models")
    entry = config["catalog"][model]
    opts["data"] = opts["data"] or entry.get("model", {}).get("data")
    if not opts["data"]:
        raise ConfigError(f"config: evaluate.data is not set and the catalog's {model}.model.data is empty: "
                          "name a text sample ({path: FILE} or {repo_id, revision, file, column})")
    if "config.json" not in entry.get("model", {}).get("files", []):
        raise ConfigError(f"config: catalog {model}.model.files lacks config.json: the model cannot be run "
                          "(list config.json, the tokenizer files and the weights)")
    return opts


DEFAULT_STEER = {"models": [], "mode": "verdict", "cut": 0.5, "fold": True, "loss_tokens": 2048, "device": "auto",
                 "dtype": "auto", "judge": None}
# a word of a generation, as a theme's keywords are counted (saematch.steer.words): a run of letters, an
# apostrophe inside kept
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
THEME_DEFAULTS = {"prompts": ["I think "], "samples": 4, "max_tokens": 36, "seed": 0, "keywords": [],
                  "scopes": ["single", "cumulative"], "schedules": ["constant"]}


def steer_models(config: dict) -> list[str]:
    """The run's models that steer.models asks to steer (each needs themes and a runnable model)."""
    wanted = config.get("steer", DEFAULT_STEER).get("models", [])
    return [m for m in config["models"] if m in wanted]


def _themes(config: dict, model: str) -> dict[str, tuple[dict, str | None]]:
    """name → (theme with :data:`THEME_DEFAULTS` filled in and seeds written L/site/i, why this
    run cannot run it or None): it may use only selected layers and sites."""
    entry = config["catalog"][model]
    if not entry.get("themes"):
        raise ConfigError(f"config: steer.models lists {model} but catalog {model}.themes is empty: "
                          "name a theme (docs/steering.md)")
    if "config.json" not in entry.get("model", {}).get("files", []):
        raise ConfigError(f"config: catalog {model}.model.files lacks config.json: the model cannot be run "
                          "(list config.json, the tokenizer files and the weights)")
    layers = set(selected_layers(config, model))
    out = {}
    for name, theme in entry["themes"].items():
        theme = {**THEME_DEFAULTS, **theme, "name": name}
        key = f"config: catalog {model}.themes.{name}"
        if "seeds" in theme:
            theme["seeds"] = [f"{int(L)}/{SITE_ALIASES.get(s, s)}/{int(i)}" for L, s, i in (x.split("/") for x in theme["seeds"])]
        if "query" in theme and not config.get("flow", {}).get("explanations", False):
            raise ConfigError(f"{key}.query reads Neuronpedia's explanations: set flow.explanations: true "
                              "(or give seeds)")
        bad = [k for k in theme["keywords"] if WORD.findall(k.casefold()) != [k.casefold()]]
        if bad:
            raise ConfigError(f"{key}.keywords: {bad} are not single words (letters, an inner apostrophe): "
                              "a generation's words are counted one by one")
        used = {int(x.split("/")[0]) for x in theme.get("seeds", [])} | set(theme["layers"])
        used |= set(theme.get("query", {}).get("layers", []))
        sites = sorted({x.split("/")[1] for x in theme.get("seeds", [])} - set(config["sites"]))
        why = None
        if used - layers:
            why = f"it uses layers {sorted(used - layers)}, not selected"
        elif sites:
            why = f"its seeds are at sites {sites}, not selected"
        out[name] = (theme, why)
    return out


def steer_themes(config: dict, model: str) -> dict[str, dict]:
    """The catalog's steering themes of ``model`` that this run's selection can run (every layer
    a theme steers, seeds or queries, and its seeds' sites, selected), with
    :data:`THEME_DEFAULTS` filled in; ConfigError for a model without themes or that cannot run,
    a query without explanations, or a keyword that is not one word."""
    return {name: theme for name, (theme, why) in _themes(config, model).items() if not why}


def skipped_themes(config: dict, model: str) -> dict[str, str]:
    """The themes of ``model`` this run leaves out, and why."""
    return {name: why for name, (theme, why) in _themes(config, model).items() if why}


N_METHODS = 6  # replacements whose ΔL each costs a forward pass per residual pair (saematch.evaluate.METHODS)
GPU_MIN_PARAMETERS = 5e7  # block parameters from which an evaluation asks a cluster for a GPU (auto)
CPU_RATE, GPU_RATE = 7e9, 4e12  # block parameters × tokens per second: per CPU thread; on a GPU


def evaluate_resources(config: dict, model: str) -> dict:
    """The evaluate job's size from the model's blocks, P = 12·n_layers·d_model² parameters
    (tiny: 1.5·10⁵; Gemma 2 2B: 1.7·10⁹; Llama 3.1 8B: 6.4·10⁹), not from what the catalog calls it:

    * ``gpu_on_cluster``: whether ``device: auto`` asks a cluster for a GPU (P ≥ 5·10⁷);
    * ``threads``: 1 below P = 10⁶ (so small a model's second thread mostly waits, and on a busy
      host those waits cost more than it gains: the tiny model's evaluation took 48 s, 15 s of
      CPU, on one thread and 194 s, 71 s of CPU, on two, on this project's 2-core machine under
      a load of 6; one thread also lets it run beside another job), 2 below P = 10⁷, 4 below
      5·10⁷, else 8;
    * ``runtime`` (minutes): 10 plus twice the estimated time of the forward passes, P × the
      tokens passed (n_tokens, and per residual pair 1 + N_METHODS passes over loss_tokens) at
      7·10⁹ per thread on a CPU (measured by bench/bench_evaluate.py on 2 cores) or 4·10¹² on a
      GPU (Gemma 2 2B: 4 h, as before).
    """
    entry = config["catalog"][model]
    opts = evaluate_options(config, model)
    P = 12 * entry["n_layers"] * entry["d_model"] ** 2
    gpu = P >= GPU_MIN_PARAMETERS
    threads = 1 if P < 1e6 else 2 if P < 1e7 else 4 if not gpu else 8
    res_pairs = len(pair_layers(config, model)) if "res" in config["sites"] else 0
    passes = opts["n_tokens"] + opts["loss_tokens"] * (1 + N_METHODS * res_pairs)
    rate = GPU_RATE if gpu and opts["device"] != "cpu" else CPU_RATE * threads
    return {"gpu_on_cluster": gpu, "threads": threads, "runtime": int(10 + 2 * P * passes / rate / 60)}


def steer_resources(config: dict, model: str, theme: dict) -> dict:
    """A steering job's size: ``gpu`` 1 where a cluster should give it one (device auto and
    P = 12·n_layers·d_model² ≥ 5·10⁷, or device cuda); ``runtime`` (minutes) 10 plus four times
    the generated and re-read tokens × 2P at the evaluation's rates (:data:`CPU_RATE` per thread
    on one thread, :data:`GPU_RATE`)."""
    entry = config["catalog"][model]
    device = config.get("steer", DEFAULT_STEER)["device"]
    P = 12 * entry["n_layers"] * entry["d_model"] ** 2
    gpu = device.startswith("cuda") or (device == "auto" and P >= GPU_MIN_PARAMETERS)
    settings = 1 + len(theme["layers"]) * len(theme["scopes"]) * len(theme["values"]) * (
        len(theme["schedules"]) if theme["how"] == "activate" else 1)
    tokens = settings * len(theme["prompts"]) * theme["samples"] * theme["max_tokens"] * 3
    return {"gpu": int(gpu), "runtime": int(10 + 4 * 2 * P * tokens / (GPU_RATE if gpu else CPU_RATE) / 60)}


def command_line_wins(config: dict, given: dict) -> dict:
    """``config`` with each ``evaluate`` key given on the command line (``given``: Snakemake's
    ``workflow.config_settings.config``, the --config values only) taken out of every catalog entry's own ``evaluate``, so the
    value typed wins over the catalog's for every model (a catalog override that was itself
    typed, ``catalog={tiny: {evaluate: {...}}}``, counts as the catalog's)."""
    typed = set(given.get("evaluate") or {}) if isinstance(given.get("evaluate"), dict) else set()
    if not typed:
        return config
    catalog = {name: ({**entry, "evaluate": {k: v for k, v in entry["evaluate"].items() if k not in typed}}
                      if "evaluate" in entry else entry)
               for name, entry in config["catalog"].items()}
    return {**config, "catalog": catalog}


def data_label(config: dict, model: str) -> str:
    """The folder of one text sample and size: its name and a short hash of its content
    (:func:`data_identity`) and sizes, e.g. 'text-3fa2c1', 'pile-10k-a91b02'."""
    opts = evaluate_options(config, model)
    data = opts["data"]
    stem = posixpath.basename(posixpath.splitext(data["path"])[0]) if "path" in data else data["repo_id"].split("/")[-1]
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", stem).strip("-._") or "data"
    return f"{stem}-{_short_hash({**data_identity(config, model), **{k: opts[k] for k in DATA_OPTIONS}})}"


TINY_TEXT = "resources/tiny/{model}/text.txt"  # the tiny model's held-out text: rule make_tiny writes it
# saematch.tiny's grammar and training: a change gives new files (rule make_tiny reruns) and a new
# evaluation folder (2: the sea and forest topics). Here, not there: the Snakefile reads it without torch.
TINY_VERSION = 2


def data_identity(config: dict, model: str) -> dict:
    """What names a text sample's content, so new text at the same path gets a new folder:

    * a local file: the sha256 of its bytes (and the Parquet column read);
    * the tiny model's own text (:data:`TINY_TEXT`, not there before make_tiny runs): the
      catalog's ``tiny`` settings and :data:`TINY_VERSION`, from which make_tiny writes it
      byte for byte;
    * a Hub dataset file: repo, revision, file and column. Pin the revision to a commit: that
      fixes the bytes (its download pointer records their sha256, and the evaluation's
      provenance copies it).
    """
    data = evaluate_options(config, model)["data"]
    if "path" not in data:
        return {"data": data}
    entry = config["catalog"][model]
    if "tiny" in entry and data["path"] == TINY_TEXT.format(model=model):
        return {"path": data["path"], "tiny": entry["tiny"], "tiny_version": TINY_VERSION}
    path = Path(data["path"])
    if not path.is_file():
        key = "evaluate.data" if config.get("evaluate", {}).get("data") else f"catalog {model}.model.data"
        raise ConfigError(f"config: {key}.path {data['path']}: text sample not found")
    return {"sha256": file_sha256(path), "column": data.get("column", "text")}


def file_sha256(path: str | Path) -> str:
    """A file's sha256, read once per process while its size and modification time stay."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    from .hub import sha256_file

    return sha256_file(path)


def dataset_spec(data: dict) -> dict | None:
    """A Hub dataset file as a download spec (None for a local file)."""
    if "path" in data:
        return None
    return {"format": "dataset", "repo_type": "dataset", "repo_id": data["repo_id"], "revision": data["revision"],
            "files": {"data": data["file"]}, "cache_dir": None, "local_files_only": False}
