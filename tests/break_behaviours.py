"""Break one behaviour the README promises at a time, run the test meant to notice, restore.

A mutation habit for the behaviours issue 11 lists (mutmut covers the pure modules):

    python tests/break_behaviours.py            # all of them
    python tests/break_behaviours.py 5 13       # some, by number

Each line says KILLED (the test failed: good) or SURVIVED. Not collected by pytest.
"""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
M = [
 ("1 rescale slope ignored", "dicom_cae/image.py", "values = arr.astype(np.float64) * slope + intercept", "values = arr.astype(np.float64) + intercept", "tests/dicom_cae/test_behaviours.py::test_rescale_slope_and_intercept_reach_the_modality_values"),
 ("2 nearest-neighbour resampling", "dicom_cae/image.py", "out = img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)", "out = img.resize((SIZE, SIZE), Image.Resampling.NEAREST)", "tests/dicom_cae/test_behaviours.py::test_shrinking_does_not_fold_fine_detail_into_coarse"),
 ("3 no max_instance_bytes check while receiving", "scp_node/server.py", "if isinstance(event.pdu, P_DATA_TF) and not inbound.add(event.assoc, event.pdu, cfg.max_instance_bytes):", "if False:", "tests/scp_node/test_poison.py::test_an_oversized_dataset_is_refused_while_it_arrives"),
 ("4 C000 instead of A700 on spool failure", "scp_node/server.py", 'LOGGER.exception("SOP Instance %s not stored: cannot write the spool", sop_uid)\n            return STATUS_OUT_OF_RESOURCES', 'LOGGER.exception("SOP Instance %s not stored: cannot write the spool", sop_uid)\n            return STATUS_CANNOT_UNDERSTAND', "tests/scp_node/test_operations.py::test_a_spool_that_cannot_be_written_answers_out_of_resources"),
 ("5 band routing off by one", "dicom_cae/model/reconstructor.py", "if lo <= quality <= hi and band.value_mapping == wanted and band.coding_size == coding_size:", "if lo < quality <= hi + 1 and band.value_mapping == wanted and band.coding_size == coding_size:", "tests/dicom_cae/test_behaviours.py::test_quality_bands_route_at_their_edges"),
 ("6 band weights ignored", "dicom_cae/model/reconstructor.py", "owner = self.for_coding(int(q), mapping, coding_size)", "owner = self", "tests/dicom_cae/test_behaviours.py::test_reconstruction_uses_the_weights_the_tags_name"),
 ("7 target ignores SSIM", "dicom_cae/pipeline.py", "self.ssim is None or metrics.ssim(reference, test) >= self.ssim", "True", "tests/dicom_cae/test_behaviours.py::test_an_ssim_target_is_met_and_the_quality_below_misses_it"),
 ("8 bisection limited to 1-50", "dicom_cae/pipeline.py", "        lo, hi = 1, 95\n", "        lo, hi = 1, 50\n", "tests/dicom_cae/test_behaviours.py::test_the_fidelity_search_reaches_high_qualities"),
 ("9 search measures the JPEG", "dicom_cae/pipeline.py", "recon = self.reconstructor(jpeg, quality, batch_size=self.batch_size, mapping=self.mapping)\n", "recon = jpeg\n", "tests/dicom_cae/test_behaviours.py::test_the_fidelity_search_measures_the_models_output"),
 ("10 errors.tsv without duplicates", "dicom_cae/convert.py", '        ("duplicate", summary.duplicates),\n', "", "tests/dicom_cae/test_behaviours.py::test_errors_tsv_lists_each_kind"),
 ("11 not-DICOM suffix rule ignored", "dicom_cae/convert.py", "if isinstance(exc, NotDicomError) and path.suffix.lower() not in DICOM_SUFFIXES:", "if isinstance(exc, NotDicomError):", "tests/dicom_cae/test_behaviours.py::test_errors_tsv_lists_each_kind"),
 ("12 duplicate detection off", "dicom_cae/convert.py", "        if k is not None and k in first:", "        if False:", "tests/dicom_cae/test_behaviours.py::test_errors_tsv_lists_each_kind"),
 ("13 skip-done key ignores the target", "dicom_cae/pipeline.py", 'text = f"{model_name}:{weights_sha256}:" + (f"q{setting}" if isinstance(setting, int) else setting.key)', 'text = f"{model_name}:{weights_sha256}:q"', "tests/dicom_cae/test_behaviours.py::test_a_rerun_with_another_target_converts_again"),
 ("14 report reads the JPEG column", "dicom_cae/report.py", '"psnr": tags.PSNR[i],', '"psnr": tags.JPEGOnlyPSNR[i],', "tests/dicom_cae/test_behaviours.py::test_report_figures_match_values_computed_here"),
 ("15 regression x and y swapped", "dicom_cae/report.py", 'fit = metrics.regression([r["mean_original"] for r in rows], [r["mean_reconstructed"] for r in rows])', 'fit = metrics.regression([r["mean_reconstructed"] for r in rows], [r["mean_original"] for r in rows])', "tests/dicom_cae/test_behaviours.py::test_report_figures_match_values_computed_here"),
 ("16 lossy history dropped", "dicom_cae/derive.py", 'ratios = [str(v) for v in _as_list(source.get("LossyImageCompressionRatio"))] if was_lossy else []', "ratios = []", "tests/dicom_cae/test_behaviours.py::test_the_lossy_history_of_the_source_is_kept"),
 ("17 spool without fsync", "scp_node/spool.py", "            os.fsync(f.fileno())", "            pass", "tests/scp_node/test_durability.py::test_the_order_of_durable_steps_seen_by_strace"),
 ("18 stale spool temp files kept", "scp_node/spool.py", "        for stale in self.tmp.iterdir():\n            stale.unlink()", "        pass", "tests/scp_node/test_operations.py::test_stale_spool_temp_files_are_dropped_at_start"),
 ("19 outputs written without durable", "scp_node/worker.py", "skip_done=False, durable=True,", "skip_done=False, durable=False,", "tests/scp_node/test_durability.py::test_the_order_of_durable_steps_seen_by_strace"),
 ("20 reported although an instance arrived", "scp_node/state.py", "WHERE study_uid = ? AND last_received <= ?\",", "WHERE study_uid = ? AND ? IS NOT NULL\",", "tests/scp_node/test_operations.py::test_a_study_is_not_marked_reported_when_an_instance_arrived_during_its_report"),
 ("21 a reconstruction below JPEG is stored", "dicom_cae/metrics.py", "return all(test[k] >= jpeg[k] for k in GUARDED)", "return True", "tests/dicom_cae/test_fidelity.py::test_a_reconstruction_below_plain_jpeg_is_not_stored"),
 ("22 only all or nothing of the correction", "dicom_cae/metrics.py", "MODEL_WEIGHTS = (1.0, 0.75, 0.5, 0.25, 0.0)", "MODEL_WEIGHTS = (1.0, 0.0)", "tests/dicom_cae/test_fidelity.py::test_part_of_a_correction_is_stored_where_all_of_it_would_be_below_jpeg"),
]
only = sys.argv[1:]
for name, path, old, new, test in M:
    if only and name.split()[0] not in only:
        continue
    p = ROOT / path
    text = p.read_text()
    if text.count(old) != 1:
        print(f"{name}: PATTERN NOT FOUND ({text.count(old)})", flush=True)
        continue
    p.write_text(text.replace(old, new))
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", test], cwd=ROOT,
                           capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=900)
        last = (r.stdout.strip().splitlines() or ["?"])[-1]
        print(f"{name}: {'KILLED' if r.returncode else 'SURVIVED'} ({last})", flush=True)
    finally:
        p.write_text(text)
