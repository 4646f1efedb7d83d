"""saematch.config: command-line values, selections, variant names, the overwrite check."""

import copy
import re
from pathlib import Path

import pytest
import yaml

from saematch import config as cfg

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
CONFIG = yaml.safe_load((ROOT / "config/config.yaml").read_text())


def with_(**changes):
    c = copy.deepcopy(CONFIG)
    c.update(changes)
    return c


# --- command-line strings become the schema's types ---------------------------------------------

@pytest.mark.parametrize("given,expected", [
    ({"match": {"fold": "false"}}, {"match": {"fold": False}}),
    ({"match": {"fold": "True"}}, {"match": {"fold": True}}),
    ({"match": {"chunk_size": "512", "k": "8", "dense_max_gb": "1.5"}},
     {"match": {"chunk_size": 512, "k": 8, "dense_max_gb": 1.5}}),
    ({"match": {"dense_max_gb": "6"}}, {"match": {"dense_max_gb": 6.0}}),
    ({"match": {"per_site": {"mlp": {"fold": "no", "k": "4"}}}}, {"match": {"per_site": {"mlp": {"fold": False, "k": 4}}}}),
    ({"layers": ["10", "11"]}, {"layers": [10, 11]}),
    ({"layers": "all"}, {"layers": "all"}),
    ({"variant": "null"}, {"variant": None}),
    ({"variant": "l0-sweep"}, {"variant": "l0-sweep"}),
    ({"match": {"weights": "dec", "device": "cuda:1"}}, {"match": {"weights": "dec", "device": "cuda:1"}}),
    ({"catalog": {"m": {"n_layers": "26", "d_model": "2304", "width": "16k"}}},
     {"catalog": {"m": {"n_layers": 26, "d_model": 2304, "width": "16k"}}}),
])
def test_command_line_strings_are_read_as_the_schema_types(given, expected):
    assert cfg.coerce(given, SCHEMA) == expected


def test_strings_that_are_not_numbers_stay_strings_for_the_schema_to_reject():
    assert cfg.coerce({"match": {"k": "many"}}, SCHEMA) == {"match": {"k": "many"}}


def test_llama_scope_site_names_are_aliases():
    assert cfg.normalise(with_(sites=["R", "M", "A"]))["sites"] == ["res", "mlp", "att"]


# --- selections ---------------------------------------------------------------------------------

@pytest.mark.parametrize("layers,message", [
    ([3], "a pair needs two consecutive layers"),
    ([3, 5], r"no consecutive pair \(L, L\+1\) for model 'demo'"),
    ([1, 4], "nothing to match"),
    ([5, 6], r"has layers 0–5; unknown layer\(s\) \[6\]"),
])
def test_a_selection_without_a_pair_is_refused_with_the_reason(layers, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.check_selection(with_(layers=layers))


def test_pairs_are_the_consecutive_selected_layers():
    assert cfg.pair_layers(with_(layers=[0, 1, 2, 4, 5]), "demo") == [0, 1, 4]
    assert cfg.pair_layers(with_(layers="all"), "demo") == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("layers,label", [
    ([0, 1, 2, 3, 4, 5], "L0-5"), ([10, 11, 12], "L10-12"), ([3, 5, 6, 7], "L3_5-7"), ([2], "L2")])
def test_layer_labels_name_exactly_the_layers(layers, label):
    assert cfg.layers_label(layers) == label


def test_a_summary_is_named_by_its_sites_and_layers():
    assert cfg.selection_label(with_(sites=["att", "res"], layers=[1, 2, 3]), "demo") == "res+att.L1-3"
    assert cfg.selection_label(CONFIG, "demo") == "res+mlp+att.L0-5"


# --- variant names ------------------------------------------------------------------------------

def test_the_default_variant_is_named_by_its_width():
    assert cfg.variant_name(CONFIG, "gemma-2-2b") == "16k"
    assert cfg.variant_name(CONFIG, "llama-3.1-8b") == "8x"


def test_every_result_changing_choice_gets_its_own_readable_name():
    names = set()
    c = with_()
    names.add(cfg.variant_name(c, "llama-3.1-8b"))
    c["catalog"]["llama-3.1-8b"]["width"] = "32x"
    names.add(cfg.variant_name(c, "llama-3.1-8b"))
    c = with_(match=dict(CONFIG["match"], fold=False))
    names.add(cfg.variant_name(c, "llama-3.1-8b"))
    c = with_(match=dict(CONFIG["match"], weights="dec"))
    names.add(cfg.variant_name(c, "llama-3.1-8b"))
    c = with_(match=dict(CONFIG["match"], per_site={"mlp": {"fold": False}}))
    names.add(cfg.variant_name(c, "llama-3.1-8b"))
    c = with_()
    c["catalog"]["llama-3.1-8b"]["sites"]["res"]["per_layer"] = {20: {"revision": "abc"}}
    names.add(cfg.variant_name(c, "llama-3.1-8b"))
    assert names == {"8x", "32x", "8x_nofold", "8x_w-dec", "8x_mlp-nofold",
                     "8x_res-L20-revision-" + cfg._short_hash("abc")}


def test_an_l0_override_is_named_by_layer_and_value():
    c = with_()
    c["catalog"]["gemma-2-2b"]["sites"]["res"]["per_layer"] = {"21": {"l0": 41}, 20: {"l0": 39}}
    assert cfg.variant_name(c, "gemma-2-2b") == "16k_res-L20-l0-39_res-L21-l0-41"


def test_options_that_do_not_change_results_keep_the_name():
    c = with_(match=dict(CONFIG["match"], solver="sparse", k=8, chunk_size=128, device="cpu"))
    assert cfg.variant_name(c, "gemma-2-2b") == "16k"


def test_projected_attention_always_matches_on_decoders_so_saying_so_is_no_variant():
    c = with_(match=dict(CONFIG["match"], per_site={"att": {"weights": "dec"}}))
    assert cfg.variant_name(c, "gemma-2-2b") == "16k"
    assert cfg.variant_name(c, "llama-3.1-8b") == "8x_att-w-dec"  # Llama's A is attn_out


def test_a_named_variant_is_used_as_given():
    assert cfg.variant_name(with_(variant="l0-sweep"), "gemma-2-2b") == "l0-sweep"


# --- the overwrite check ------------------------------------------------------------------------

SPEC = {"format": "gemma-scope", "repo_id": "g/res", "revision": "abc",
        "files": {"params": "layer_2/width_16k/average_l0_35/params.npz"}}


def provenance(spec=SPEC, **options):
    pointer = dict(spec, commit="c" * 40, files={r: {"filename": f, "size": 1, "sha256": "0" * 64}
                                                   for r, f in spec["files"].items()})
    return {"src": pointer, "dst": pointer, "options": {"fold": True, "weights": "enc+dec+benc", **options}}


def test_the_same_saes_and_options_are_no_change():
    expected = {"src": SPEC, "dst": SPEC, "options": {"fold": True, "weights": "enc+dec+benc", "k": 8}}
    assert cfg.describe_change(provenance(), expected) is None


@pytest.mark.parametrize("change,phrase", [
    (lambda e: e["dst"].update(files={"params": "layer_2/width_16k/average_l0_90/params.npz"}), "dst files"),
    (lambda e: e["src"].update(revision="def"), "src revision abc → def"),
    (lambda e: e["src"].update(repo_id="g/other"), "src repo_id"),
    (lambda e: e["options"].update(fold=False), "match.fold True → False"),
    (lambda e: e["options"].update(weights="dec"), "match.weights enc+dec+benc → dec"),
    (lambda e: e["options"].update(partial=True), "match.partial False → True"),
    (lambda e: e["options"].update(cut=0.7), "match.cut 0.5 → 0.7"),
])
def test_other_saes_or_result_options_are_a_change(change, phrase):
    expected = {"src": dict(SPEC), "dst": dict(SPEC), "options": {"fold": True, "weights": "enc+dec+benc"}}
    change(expected)
    assert phrase in cfg.describe_change(provenance(), expected)


def test_results_that_predate_an_option_count_as_made_with_its_default():
    expected = {"src": SPEC, "dst": SPEC, "options": {"fold": True, "weights": "enc+dec+benc", "partial": False,
                                                      "cut": 0.5, "null_rows": 1024, "null_draws": 2}}
    assert cfg.describe_change(provenance(), expected) is None  # provenance() has no verdict options
    expected["options"]["null_draws"] = 4
    assert cfg.describe_change(provenance(), expected) == "match.null_draws 2 → 4"


@pytest.mark.parametrize("match,variant", [
    ({"partial": True}, "16k_partial"), ({"cut": 0.7}, "16k_cut-0.7"), ({"null_rows": 2048, "null_draws": 4},
                                                                         "16k_null-2048x4"),
])
def test_the_verdicts_options_name_their_variant(match, variant):
    c = with_()
    c["match"] = {**c["match"], **match}
    assert cfg.variant_name(c, "gemma-2-2b") == variant


def test_each_sae_has_one_pointer_named_by_repo_revision_and_files():
    gemma = {"format": "gemma-scope", "repo_id": "google/gemma-scope-2b-pt-res", "revision": "fd57",
             "files": {"params": "layer_12/width_16k/average_l0_82/params.npz"}}
    llama = {"format": "llama-scope", "repo_id": "fnlp/Llama3_1-8B-Base-LXR-8x", "revision": "main",
             "files": {"hyperparams": "Llama3_1-8B-Base-L12R-8x/hyperparams.json",
                       "weights": "Llama3_1-8B-Base-L12R-8x/checkpoints/final.safetensors"}}
    model = {"format": "model", "repo_id": "google/gemma-2-2b", "revision": "c5eb", "files": {}}
    assert cfg.pointer_path(gemma) == \
        "resources/hub/sae/google--gemma-scope-2b-pt-res/fd57/layer_12/width_16k/average_l0_82/params.npz.json"
    assert cfg.pointer_path(llama) == "resources/hub/sae/fnlp--Llama3_1-8B-Base-LXR-8x/main/Llama3_1-8B-Base-L12R-8x.json"
    assert cfg.pointer_path(model) == "resources/hub/model/google--gemma-2-2b/c5eb.json"


# --- the evaluation's sample and folders ------------------------------------------------------------

def test_only_the_run_models_listed_in_evaluate_models_are_evaluated():
    assert cfg.evaluate_models(with_(models=["demo", "tiny"])) == ["tiny"]
    assert cfg.evaluate_models(with_(models=["demo"])) == []


def test_a_catalog_entry_overrides_the_global_sizes_and_supplies_the_sample():
    opts = cfg.evaluate_options(with_(models=["tiny"]), "tiny")
    assert opts["n_tokens"] == 8192 and opts["context"] == 128 and opts["data"] == {"path": "resources/tiny/tiny/text.txt"}
    assert opts["top_k"] == 5 and "models" not in opts


def test_the_data_folder_changes_with_the_sample_and_its_size_but_not_with_memory_settings():
    base = with_(models=["tiny"])
    label = cfg.data_label(base, "tiny")
    assert label.startswith("text-") and len(label) == len("text-") + 6
    other = copy.deepcopy(base)
    other["catalog"]["tiny"]["evaluate"]["n_tokens"] = 4096
    assert cfg.data_label(other, "tiny") != label
    other = copy.deepcopy(base)
    other["evaluate"]["batch_size"], other["evaluate"]["dense_max_gb"] = 2, 1
    other["catalog"]["tiny"]["evaluate"]["batch_size"] = 2
    assert cfg.data_label(other, "tiny") == label
    hub = with_(models=["gemma-2-2b"], evaluate={**CONFIG["evaluate"], "data": {
        "repo_id": "org/web-text", "revision": "abc123", "file": "data/part-0.parquet"}})
    assert cfg.data_label(hub, "gemma-2-2b").startswith("web-text-")
    assert cfg.pointer_path(cfg.dataset_spec(hub["evaluate"]["data"])) == \
        "resources/hub/dataset/org--web-text/abc123/data/part-0.parquet.json"


def test_a_model_without_a_sample_or_a_runnable_model_is_refused_with_the_key_to_set():
    with pytest.raises(cfg.ConfigError, match="evaluate.data is not set.*gemma-2-2b.model.data"):
        cfg.evaluate_options(with_(models=["gemma-2-2b"]), "gemma-2-2b")
    demo = with_(models=["demo"], evaluate={**CONFIG["evaluate"], "data": {"path": "x.txt"}})
    with pytest.raises(cfg.ConfigError, match="demo.model.files lacks config.json"):
        cfg.evaluate_options(demo, "demo")


# --- the catalog's revisions --------------------------------------------------------------------

COMMIT = r"^[0-9a-f]{40}$"


def catalog_revision_lines(text: str) -> dict[str, list[tuple[object, str]]]:
    """Model → (revision value, its line's comment) for every `revision:` line of the catalog."""
    import re

    out, model, in_catalog = {}, None, False
    for line in text.splitlines():
        if re.match(r"^\S", line):
            in_catalog = line.startswith("catalog:")
            continue
        m = re.match(r"^  ([A-Za-z0-9][A-Za-z0-9._-]*):", line)
        if in_catalog and m:
            model = m[1]
        m = re.match(r"^\s+revision:\s*([^#]+?)\s*(?:#\s*(.*))?$", line)
        if in_catalog and model and m:
            out.setdefault(model, []).append((yaml.safe_load(m[1]), m[2] or ""))
    return out


def test_every_hub_repo_of_the_real_models_is_pinned_to_a_commit_or_says_why_not():
    import re

    lines = catalog_revision_lines((ROOT / "config/config.yaml").read_text())
    real = [m for m, e in CONFIG["catalog"].items() if "demo" not in e and "tiny" not in e]
    assert real == ["gemma-2-2b", "llama-3.1-8b"]
    for model in real:
        entry = CONFIG["catalog"][model]
        n_revisions = len(entry["sites"]) + ("model" in entry) + sum(
            "revision" in o for s in entry["sites"].values() for o in s.get("per_layer", {}).values())
        assert len(lines[model]) == n_revisions, f"{model}: a revision not on one line"
        for value, comment in lines[model]:
            revisions = list(value.values()) if isinstance(value, dict) else [value]
            if not all(re.match(COMMIT, str(r)) for r in revisions):
                assert re.match(r"unpinned: \S.{20,}", comment), f"{model}: revision {value} is no commit and says not why"
    pinned = {m: [v for v, c in lines[m] if not c.startswith("unpinned")] for m in real}
    assert CONFIG["catalog"]["llama-3.1-8b"]["model"]["revision"] in pinned["llama-3.1-8b"]


def test_the_gated_models_are_marked_in_the_catalog():
    gated = {e["model"]["repo_id"] for e in CONFIG["catalog"].values() if e.get("model", {}).get("gated")}
    assert gated == {"google/gemma-2-2b", "meta-llama/Llama-3.1-8B"}


# --- paths made from templates: always inside their folder ----------------------------------------

PARAMS = "layer_{layer}/width_{width}/average_l0_{l0}/params.npz"
FIELDS = {"layer": 4, "l0": 41, "width": "1k"}
PARAMS_KEY = "catalog.demo.sites.res.files.params"


def test_a_filled_template_is_a_path_inside_its_folder():
    assert cfg.fill(PARAMS, FIELDS, PARAMS_KEY) == "layer_4/width_1k/average_l0_41/params.npz"
    assert cfg.fill("fnlp/Llama3_1-8B-Base-LX{layer}R-{width}", {"layer": 3, "width": "8x"}, "k") == \
        "fnlp/Llama3_1-8B-Base-LX3R-8x"


@pytest.mark.parametrize("l0,problem", [
    ("x/../../../../C_escape/pwn", r"a path may not leave its folder \('\.\.'\)"),
    ("x/..", r"a path may not leave its folder \('\.\.'\)"),
    ("x//y", "a path may not have an empty segment"),
    ("x/./y", r"a path may not have a '\.' segment"),
    ("x\\..\\..\\pwn", "a path may not hold a backslash"),
    ("x\0y", "a path may not hold a control character"),
])
def test_a_value_that_takes_a_path_out_of_its_folder_is_refused_naming_its_key(l0, problem):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.fill(PARAMS, {**FIELDS, "l0": l0}, PARAMS_KEY, {"l0": "catalog.demo.sites.res.per_layer.4.l0"})
    message, shown = str(err.value), l0.replace("\0", "\\x00")  # a control character is shown escaped
    assert message.startswith(f'config: catalog.demo.sites.res.per_layer.4.l0 → "layer_4/width_1k/average_l0_{shown}/')
    assert re.search(problem, message)
    assert "\n" not in message


@pytest.mark.parametrize("template,problem", [
    ("/etc/{layer}.npz", r'config: k → "/etc/4\.npz": a path must be relative \(no leading \'/\'\)'),
    ("{l0}", 'config: k → "": a path may not be empty'),
    ("layer_{layer}/", r'config: k → "layer_4/": a path may not have an empty segment'),
])
def test_a_template_that_is_no_relative_path_is_refused_naming_its_own_key(template, problem):
    with pytest.raises(cfg.ConfigError, match=problem):
        cfg.fill(template, {**FIELDS, "l0": ""}, "k", {"l0": "l0-key"} if template != "{l0}" else None)


def test_an_unknown_template_field_is_named_with_the_key_and_the_known_fields():
    with pytest.raises(cfg.ConfigError) as err:
        cfg.fill("layer_{layer}/{oops}/params.npz", FIELDS, PARAMS_KEY)
    assert str(err.value) == ('config: catalog.demo.sites.res.files.params: unknown field {oops} in '
                              '"layer_{layer}/{oops}/params.npz"; fields: layer, l0, width')
    with pytest.raises(cfg.ConfigError, match=r'config: k: "layer_\{\}" is not a template \('):
        cfg.fill("layer_{}", FIELDS, "k")


def test_a_neuronpedia_set_is_a_path_inside_resources_neuronpedia():
    from saematch.neuronpedia import set_for

    entry = copy.deepcopy(CONFIG["catalog"]["gemma-2-2b"])
    assert set_for(entry, "res", 3, model="gemma-2-2b") == {"model": "gemma-2-2b", "set": "3-gemmascope-res-16k"}
    entry["neuronpedia"]["sets"]["res"] = "../../../NP_escape/{layer}"
    with pytest.raises(cfg.ConfigError, match=r'config: catalog\.gemma-2-2b\.neuronpedia\.sets\.res → '
                                              r'"\.\./\.\./\.\./NP_escape/3": a path may not leave its folder'):
        set_for(entry, "res", 3, model="gemma-2-2b")
    entry["neuronpedia"]["sets"]["res"] = "{layer}-{oops}"
    with pytest.raises(cfg.ConfigError, match=r"neuronpedia\.sets\.res: unknown field \{oops\}.*; fields: layer, width"):
        set_for(entry, "res", 3, model="gemma-2-2b")
    entry = copy.deepcopy(CONFIG["catalog"]["gemma-2-2b"])
    entry["neuronpedia"]["model"] = "../../up"
    with pytest.raises(cfg.ConfigError, match=r'catalog\.gemma-2-2b\.neuronpedia\.model → "\.\./\.\./up"'):
        set_for(entry, "res", 3, model="gemma-2-2b")


def test_an_explanations_file_listed_outside_its_sets_folder_is_not_written(tmp_path, monkeypatch):
    """The public export's listing decides the file names: one that climbs out is refused."""
    import sys
    import types

    from saematch.neuronpedia import download_explanations

    prefix = "v1/gemma-2-2b/3-gemmascope-res-16k/explanations/"
    listing = [prefix + "batch-0.jsonl.gz", prefix + "../../../../../../escaped.jsonl.gz"]

    class Bucket:  # boto3's S3 client, as far as download_explanations uses it
        def get_paginator(self, _):
            return types.SimpleNamespace(paginate=lambda **kw: [{"Contents": [{"Key": k} for k in listing]}])

        def download_file(self, bucket, key, dest):
            Path(dest).write_bytes(b"")

    monkeypatch.setitem(sys.modules, "boto3", types.SimpleNamespace(client=lambda *a, **kw: Bucket()))
    monkeypatch.setitem(sys.modules, "botocore", types.SimpleNamespace(UNSIGNED=object()))
    monkeypatch.setitem(sys.modules, "botocore.config", types.SimpleNamespace(Config=lambda **kw: None))
    root = tmp_path / "a/b/c/resources/neuronpedia"
    with pytest.raises(ValueError, match=r"escaped\.jsonl\.gz: not a file of v1/gemma-2-2b/3-gemmascope-res-16k/explanations/"):
        download_explanations("gemma-2-2b", "3-gemmascope-res-16k", root)
    assert (root / prefix / "batch-0.jsonl.gz").exists()
    assert sorted(p.name for p in tmp_path.rglob("*.gz")) == ["batch-0.jsonl.gz"]


def test_new_text_at_the_same_path_gets_a_new_data_folder(tmp_path):
    sample = tmp_path / "sample.txt"
    sample.write_text("the first text\n")
    config = with_(models=["tiny"], evaluate={**CONFIG["evaluate"], "data": {"path": str(sample)}})
    first = cfg.data_label(config, "tiny")
    assert first.startswith("sample-")
    sample.write_text("another text entirely\n")
    second = cfg.data_label(config, "tiny")
    assert second != first  # a rerun writes beside the first folder, never into it
    sample.write_text("the first text\n")
    assert cfg.data_label(config, "tiny") == first  # named by the bytes, not by when they were written


def test_a_missing_local_text_sample_is_refused_before_any_job(tmp_path):
    config = with_(models=["tiny"], evaluate={**CONFIG["evaluate"], "data": {"path": str(tmp_path / "gone.txt")}})
    with pytest.raises(cfg.ConfigError, match=r"^config: evaluate.data.path .*gone.txt: text sample not found$"):
        cfg.data_label(config, "tiny")


def test_evaluate_values_given_on_the_command_line_win_over_the_catalogs():
    given = {"evaluate": {"n_tokens": "5", "batch_size": "2"}}  # workflow.overwrite_config: as typed
    config = with_(models=["tiny"])
    config["evaluate"].update(n_tokens=5, batch_size=2)  # what the Snakefile's config holds then
    config = cfg.command_line_wins(config, given)
    opts = cfg.evaluate_options(config, "tiny")
    assert opts["n_tokens"] == 5 and opts["batch_size"] == 2
    assert opts["context"] == 128 and opts["loss_tokens"] == 4096  # the catalog's, where not given
    assert cfg.evaluate_options(cfg.command_line_wins(with_(models=["tiny"]), {}), "tiny")["n_tokens"] == 8192


def _user_model(n_layers, d_model):
    """A small model of the user's own: a catalog entry with no tiny key."""
    c = with_(models=["mine"], evaluate={**CONFIG["evaluate"], "models": ["mine"], "data": {"path": "config/config.yaml"}})
    c["catalog"]["mine"] = {**copy.deepcopy(CONFIG["catalog"]["gemma-2-2b"]), "n_layers": n_layers, "d_model": d_model}
    return c


def test_evaluate_resources_are_sized_from_the_models_layers_and_width(monkeypatch):
    monkeypatch.chdir(ROOT)
    tiny = cfg.evaluate_resources(with_(models=["tiny"]), "tiny")
    small = cfg.evaluate_resources(_user_model(4, 256), "mine")  # 3·10⁶ block parameters, as tiny as it looks
    sample = {**CONFIG["evaluate"], "data": {"path": "config/config.yaml"}}
    gemma = cfg.evaluate_resources(with_(models=["gemma-2-2b"], evaluate=sample), "gemma-2-2b")
    llama = cfg.evaluate_resources(with_(models=["llama-3.1-8b"], evaluate=sample), "llama-3.1-8b")
    assert tiny == {"gpu_on_cluster": False, "threads": 1, "runtime": 10}  # one thread below 10⁶
    assert not small["gpu_on_cluster"] and small["threads"] == 2 and small["runtime"] <= 60
    assert gemma["gpu_on_cluster"] and gemma["threads"] == 8 and 120 <= gemma["runtime"] <= 480
    assert llama["gpu_on_cluster"] and llama["runtime"] > gemma["runtime"]
    mid = cfg.evaluate_resources(_user_model(6, 512), "mine")  # 2·10⁷: on the CPU, 4 threads, longer
    assert not mid["gpu_on_cluster"] and mid["threads"] == 4 and mid["runtime"] > small["runtime"]


def test_the_runtime_estimate_counts_every_replacement_method():
    from saematch.evaluate import METHODS

    assert cfg.N_METHODS == len(METHODS)


# --- steering themes (rule steer) ---------------------------------------------------------------

def test_only_the_run_models_listed_in_steer_models_are_steered_with_their_catalog_themes_filled_in():
    c = with_(models=["demo", "tiny"])
    assert cfg.steer_models(c) == ["tiny"]
    themes = cfg.steer_themes(c, "tiny")
    assert sorted(themes) == ["forest-off", "sea"]
    sea = themes["sea"]
    assert sea["name"] == "sea" and sea["how"] == "activate" and sea["scopes"] == ["single", "cumulative"]
    assert sea["schedules"] == ["constant"] and sea["seed"] == 0  # the defaults where the catalog is silent
    assert sea["samples"] == 8 and sea["prompts"] == ["the"]  # the catalog's own values kept


def test_the_papers_five_gemma_themes_are_ready_configs():
    themes = cfg.steer_themes(with_(models=["gemma-2-2b"], steer={**CONFIG["steer"], "models": ["gemma-2-2b"]}),
                              "gemma-2-2b")
    assert {t: (v["how"], v["seeds"][0]) for t, v in themes.items()} == {
        "anger": ("activate", "12/res/4111"), "mental-health": ("activate", "12/res/16226"),
        "wedding": ("activate", "12/res/4230"), "religion": ("activate", "12/res/5483"),
        "science-off": ("deactivate", "3/res/9811")}
    assert len(themes["science-off"]["seeds"]) == 10 and themes["science-off"]["max_tokens"] == 96
    assert themes["wedding"]["prompts"] == ["I think "] and themes["wedding"]["max_tokens"] == 36


def test_seed_sites_may_use_llama_scopes_letters():
    c = copy.deepcopy(CONFIG)
    c["catalog"]["tiny"]["themes"]["sea"]["seeds"] = ["1/R/32", "2/A/3", "02/res/007"]
    assert cfg.steer_themes(c, "tiny")["sea"]["seeds"] == ["1/res/32", "2/att/3", "2/res/7"]


@pytest.mark.parametrize("change,message", [
    (lambda c: c["catalog"]["tiny"].pop("themes"), "catalog tiny.themes is empty"),
    (lambda c: c["catalog"]["tiny"]["model"]["files"].remove("config.json"), "lacks config.json"),
    (lambda c: c["catalog"]["tiny"]["themes"]["sea"].update(query={"text": "sea", "layers": [1]}),
     "tiny.themes.sea.query reads Neuronpedia's explanations: set flow.explanations: true"),
    (lambda c: c["catalog"]["tiny"]["themes"]["sea"].update(keywords=["boat", "well-being", "new york"]),
     "tiny.themes.sea.keywords: ['well-being', 'new york'] are not single words"),
])
def test_a_theme_that_cannot_run_is_refused_naming_the_key(change, message):
    c = copy.deepcopy(CONFIG)
    change(c)
    with pytest.raises(cfg.ConfigError, match=re.escape(message)):
        cfg.steer_themes(c, "tiny")


def test_a_theme_using_layers_the_run_does_not_select_is_left_out_and_named():
    c = with_(layers=[0, 1])
    why = "it uses layers [2], not selected"
    assert cfg.steer_themes(c, "tiny") == {} and cfg.skipped_themes(c, "tiny") == {"sea": why, "forest-off": why}
    c = copy.deepcopy(CONFIG)
    c["catalog"]["tiny"]["themes"]["sea"]["seeds"] = ["5/res/1"]
    assert list(cfg.steer_themes(c, "tiny")) == ["forest-off"]
    assert cfg.skipped_themes(c, "tiny") == {"sea": "it uses layers [5], not selected"}
    c["catalog"]["tiny"]["themes"]["sea"]["seeds"] = ["1/mlp/3"]
    c["sites"] = ["res"]
    assert cfg.skipped_themes(c, "tiny") == {"sea": "its seeds are at sites ['mlp'], not selected"}


@pytest.mark.parametrize("theme,ok", [
    ({"how": "activate", "seeds": ["1/res/2"], "layers": [1], "values": [4]}, True),
    ({"how": "activate", "query": {"text": "sea", "layers": [1]}, "layers": [1], "values": [4]}, True),
    ({"how": "activate", "layers": [1], "values": [4]}, False),  # no seeds
    ({"how": "activate", "seeds": ["1/res/2"], "query": {"text": "sea", "layers": [1]}, "layers": [1],
      "values": [4]}, False),  # both
    ({"how": "boost", "seeds": ["1/res/2"], "layers": [1], "values": [4]}, False),
    ({"how": "activate", "seeds": ["1/xyz/2"], "layers": [1], "values": [4]}, False),
    ({"how": "activate", "seeds": ["1/res/2"], "layers": [1], "values": [4], "scopes": ["all"]}, False),
])
def test_the_schema_takes_a_theme_with_seeds_or_a_query_and_nothing_else(theme, ok):
    import jsonschema

    c = copy.deepcopy(CONFIG)
    c["catalog"]["tiny"]["themes"] = {"t": theme}
    errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(c))
    assert (not errors) == ok, [e.message for e in errors]


def test_steer_resources_ask_a_cluster_for_a_gpu_for_a_real_model_only():
    c = with_(models=["gemma-2-2b", "tiny"])
    gemma = cfg.steer_themes({**c, "steer": {**CONFIG["steer"], "models": ["gemma-2-2b"]}}, "gemma-2-2b")["wedding"]
    assert cfg.steer_resources(c, "gemma-2-2b", gemma)["gpu"] == 1
    assert cfg.steer_resources(c, "tiny", cfg.steer_themes(c, "tiny")["sea"]) == {"gpu": 0, "runtime": 10}
    c["steer"] = {**CONFIG["steer"], "device": "cpu"}
    assert cfg.steer_resources(c, "gemma-2-2b", gemma)["gpu"] == 0
