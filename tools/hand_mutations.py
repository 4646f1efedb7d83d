"""The hand mutations of the "tests that catch wrong answers" issues (1–8: the core; 9–17: the
analysis modules), each in a scratch copy of the last commit: each must make its named test fail
(and the test must pass unmutated).

    python tools/hand_mutations.py [baseline] [1 2 …]     # all by default; `baseline`: no edits
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
M = [
 ("sparse.price without the bf16 error-bound terms", "src/saematch/sparse.py",
  [("            r = G.abs().mul_(-b_rel)\n            r += G\n", "            r = G.clone()\n"),
   ("            r.addr_(nx_r, ny[cols], alpha=-2 * a)", "            pass")],
  "tests/test_sparse.py::test_pricing_keeps_the_bf16_error_bound_so_a_certified_total_is_the_float64_optimum_where_bf16_decides"),
 ("certificate without the infeasibility correction", "src/saematch/certify.py",
  [("    dual = float(np.sum(u, dtype=np.float64) + np.sum(v, dtype=np.float64)\n                 + np.minimum(row_min, 0).sum(dtype=np.float64))",
    "    dual = float(np.sum(u, dtype=np.float64) + np.sum(v, dtype=np.float64))")],
  "tests/test_certificate_outliers.py::test_any_infeasible_duals_give_the_corrected_dual_bound_below_the_float64_optimum"),
 ("certified ignoring violated entries", "src/saematch/certify.py",
  [("    if violated:\n        reasons.append(", "    if False:\n        reasons.append(")],
  "tests/test_certificate_outliers.py::test_a_single_entry_below_its_own_tolerance_flips_the_certificate"),
 ("violation tolerance loosened 10^4 x", "src/saematch/certify.py",
  [("EPS = 1e-6", "EPS = 1e-2")],
  "tests/test_certificate_outliers.py::test_a_single_entry_below_its_own_tolerance_flips_the_certificate"),
 ("match_pair.py ignoring the match options", "scripts/match_pair.py",
  [("match_pair(src, dst, device=dev, **snakemake.params.options)", "match_pair(src, dst, device=dev)")],
  "tests/test_workflow.py::test_the_pipelines_matches_are_the_librarys_for_the_same_options"),
 ("Llama loader ignoring sparsity_include_decoder_norm", "src/saematch/load.py",
  [('if hp.get("sparsity_include_decoder_norm", True) else', 'if True else')],
  "tests/test_llama_forward.py::test_llama_loader_gives_the_hand_computed_reconstruction_on_raw_input"),
 ("wrong scaling in norm_activation inference/none", "src/saematch/load.py",
  [("    else:  # \"inference\", \"none\", null\n        c_in = c_out = 1.0", "    else:  # \"inference\", \"none\", null\n        c_in = c_out = math.sqrt(d)")],
  "tests/test_llama_forward.py::test_llama_loader_gives_the_hand_computed_reconstruction_on_raw_input"),
 ("folding removed from match_pair", "src/saematch/match.py",
  [("a, b = (fold_sae(src), fold_sae(dst)) if fold else (src, dst)", "a, b = src, dst")],
  "tests/test_match.py::test_folding_recovers_matches_that_the_scale_symmetry_hides_from_raw_parameters"),
 ("summary's precision column computing the recall", "src/saematch/summary.py",
  [('.sum().truediv(declared.sum()).alias(f"{prefix}persists_precision")', '.sum().truediv(right.sum()).alias(f"{prefix}persists_precision")')],
  "tests/test_analysis_summary.py::test_precision_is_the_share_of_declared_features_with_the_planted_partner_and_recall_of_the_planted"),
 ("console table showing the recall as precision", "src/saematch/summary.py",
  [('pl.col("persists_precision").round(3).alias("precision")', 'pl.col("persists_recall").round(3).alias("precision")')],
  "tests/test_analysis_summary.py::test_the_console_table_shows_precision_and_recall_each_under_its_own_name"),
 ("'correct' ignoring the partner's identity", "src/saematch/summary.py",
  [('return (pl.col("planted") >= 0) & (pl.col(partner) == pl.col("planted")).fill_null(False)', 'return (pl.col("planted") >= 0)')],
  "tests/test_analysis_summary.py::test_a_declared_feature_with_the_wrong_partner_is_not_correct"),
 ("lifetimes chained by top1 instead of match", "src/saematch/lifetimes.py",
  [('pairs[L] = {"match": g["match"].fill_null(-1).to_numpy()', 'pairs[L] = {"match": g["top1"].fill_null(-1).to_numpy()')],
  "tests/test_analysis_lifetimes.py::test_chains_of_files_follow_the_assignments_persisting_links_not_the_top1"),
 ("saematch lifetimes listing the shortest chains as the longest", "src/saematch/cli.py",
  [('.sort(["layers", "site", "chain"], descending=[True, False, False])', '.sort(["layers", "site", "chain"], descending=[False, False, False])')],
  "tests/test_analysis_lifetimes.py::test_the_lifetimes_command_lists_the_longest_chains_first"),
 ("ΔL patched at every position (BOS, position 0, padding)", "src/saematch/evaluate.py",
  [("            def patch(out, caps, L=L, m=m, shift=shift):", "            def patch(out, caps, L=L, m=m, shift=shift, valid=torch.ones_like(valid)):")],
  "tests/test_analysis_evaluate.py::test_delta_loss_patches_the_replacement_only_at_valid_tokens_never_bos_position_0_or_padding"),
 ("r_top1 computed from the assigned partner's sums", "src/saematch/evaluate.py",
  [('r = pearson(st[f"sxy_{name}"], n,', 'r = pearson(st["sxy_match"], n,')],
  "tests/test_analysis_evaluate.py::test_each_partners_r_is_from_its_own_co_activation_sums"),
 ("verdict's kappa without its clip", "src/saematch/verdict.py",
  [("    c = np.clip(score, *CLIP)\n    return c * d_eff", "    c = score\n    return c * d_eff")],
  "tests/test_analysis_verdict.py::test_the_ambiguitys_kappa_clips_the_partners_score_to_0_05_0_95"),
]
only = sys.argv[1:]
if "baseline" in only:
    M = [(n, p, [], t) for n, p, e, t in M]
    only = [a for a in only if a != "baseline"]
for k, (name, path, edits, test) in enumerate(M, 1):
    if only and str(k) not in only:
        continue
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(f"git -C {ROOT} archive HEAD | tar x -C {tmp}", shell=True, check=True)
        f = Path(tmp) / path
        s = f.read_text()
        for old, new in edits:
            assert old in s, (name, old)
            s = s.replace(old, new)
        f.write_text(s)
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test],
                           cwd=tmp, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=f"{tmp}/src"))
        last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]
        print(f"{k}. {name}: {'FAILS (caught)' if r.returncode else 'passes (NOT caught)'} — {test.split('::')[-1]} — {last}", flush=True)
