"""Break one behaviour the README promises at a time, run the test meant to notice, restore.

A mutation habit for the behaviours the issues list (mutmut covers the pure modules):

    python tests/break_behaviours.py            # all of them
    python tests/break_behaviours.py 5 13       # some, by number

Each change is found by name: the function (or class.method, or "<module>" for module level)
in the file, then the statement inside it; a refactor that moves or renames either makes the
line say TARGET NOT FOUND instead of silently breaking nothing. Each line says KILLED (the test
failed: good), SURVIVED, or TARGET NOT FOUND. Not collected by pytest.
"""

import ast
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
F, T = "tests/dicom_cae/test_fidelity.py", "tests/dicom_cae/test_behaviours.py"
M = [
 ("1 rescale slope ignored", "dicom_cae/image.py", "modality_frames", "values = arr.astype(np.float64) * slope + intercept", "values = arr.astype(np.float64) + intercept", f"{T}::test_rescale_slope_and_intercept_reach_the_modality_values"),
 ("2 nearest-neighbour resampling", "dicom_cae/image.py", "_resample", "out = img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)", "out = img.resize((SIZE, SIZE), Image.Resampling.NEAREST)", f"{T}::test_shrinking_does_not_fold_fine_detail_into_coarse"),
 ("3 no max_instance_bytes check while receiving", "scp_node/server.py", "handlers.on_pdu", "if isinstance(event.pdu, P_DATA_TF) and not inbound.add(event.assoc, event.pdu, cfg.max_instance_bytes):", "if False:", "tests/scp_node/test_poison.py::test_an_oversized_dataset_is_refused_while_it_arrives"),
 ("4 C000 instead of A700 on spool failure", "scp_node/server.py", "handlers.on_store", 'LOGGER.exception("SOP Instance %s not stored: cannot write the spool", sop_uid)\n            return STATUS_OUT_OF_RESOURCES', 'LOGGER.exception("SOP Instance %s not stored: cannot write the spool", sop_uid)\n            return STATUS_CANNOT_UNDERSTAND', "tests/scp_node/test_operations.py::test_a_spool_that_cannot_be_written_answers_out_of_resources"),
 ("5 one coding size for every frame", "dicom_cae/pipeline.py", "Pipeline.reconstruct", "quality[idx], int(s))", "quality[idx], 256)", f"{F}::test_every_coding_size_is_restored_by_the_model_told_its_size"),
 ("6 model not told the quality", "dicom_cae/model/reconstructor.py", "Reconstructor._run", "x, q = x[served], qualities[served] / 100.0", "x, q = x[served], qualities[served] * 0 + 0.3", f"{T}::test_one_set_of_weights_serves_every_quality_and_coding_size"),
 ("7 target ignores SSIM", "dicom_cae/targets.py", "Target.met", "self.ssim is None or metrics.ssim(reference, test) >= self.ssim", "True", f"{T}::test_an_ssim_target_is_met_and_the_quality_below_misses_it"),
 ("8 bisection limited to 1-50", "dicom_cae/targets.py", "for_fidelity", "        lo, hi = 1, 95\n", "        lo, hi = 1, 50\n", f"{T}::test_the_fidelity_search_reaches_high_qualities"),
 ("9 search measures the JPEG", "dicom_cae/pipeline.py", "Pipeline.prepare_for_target", "jpeg, self._recon(jpeg, quality, size), img.norm", "jpeg, jpeg, img.norm", f"{T}::test_the_fidelity_search_measures_the_models_output"),
 ("10 errors.tsv without duplicates", "dicom_cae/convert.py", "_convert", '        ("duplicate", summary.duplicates),\n', "", f"{T}::test_errors_tsv_lists_each_kind"),
 ("11 not-DICOM suffix rule ignored", "dicom_cae/convert.py", "_record_failure", "if isinstance(exc, NotDicomError) and path.suffix.lower() not in DICOM_SUFFIXES:", "if isinstance(exc, NotDicomError):", f"{T}::test_errors_tsv_lists_each_kind"),
 ("12 duplicate detection off", "dicom_cae/convert.py", "_first_of_each", "        if k is not None and k in first:", "        if False:", f"{T}::test_errors_tsv_lists_each_kind"),
 ("13 skip-done key ignores the target", "dicom_cae/pipeline.py", "key", 'text = f"{model_name}:{weights_sha256}:" + (f"q{setting}" if isinstance(setting, int) else setting.key)', 'text = f"{model_name}:{weights_sha256}:q"', f"{T}::test_a_rerun_with_another_target_converts_again"),
 ("14 report reads the JPEG column", "dicom_cae/report.py", "image_rows", '"psnr": tags.PSNR[i],', '"psnr": tags.JPEGOnlyPSNR[i],', f"{T}::test_report_figures_match_values_computed_here"),
 ("15 regression x and y swapped", "dicom_cae/report.py", "build", 'fit = metrics.regression([r["mean_original"] for r in rows], [r["mean_reconstructed"] for r in rows])', 'fit = metrics.regression([r["mean_reconstructed"] for r in rows], [r["mean_original"] for r in rows])', f"{T}::test_report_figures_match_values_computed_here"),
 ("16 lossy history dropped", "dicom_cae/derive.py", "derive", 'ratios = [str(v) for v in _as_list(source.get("LossyImageCompressionRatio"))] if was_lossy else []', "ratios = []", f"{T}::test_the_lossy_history_of_the_source_is_kept"),
 ("17 spool without fsync", "scp_node/spool.py", "Spool.put", "            os.fsync(f.fileno())", "            pass", "tests/scp_node/test_durability.py::test_the_order_of_durable_steps_seen_by_strace"),
 ("18 stale spool temp files kept", "scp_node/spool.py", "Spool.__init__", "        for stale in self.tmp.iterdir():\n            stale.unlink()", "        pass", "tests/scp_node/test_operations.py::test_stale_spool_temp_files_are_dropped_at_start"),
 ("19 outputs written without durable", "dicom_cae/runner.py", "<module>", "skip_done=False, durable=True, by_sop=True)", "skip_done=False, durable=False, by_sop=True)", "tests/scp_node/test_durability.py::test_the_order_of_durable_steps_seen_by_strace"),
 ("20 reported although an instance arrived", "scp_node/state.py", "State.study_reported", "WHERE study_uid = ? AND last_received <= ?\",", "WHERE study_uid = ? AND ? IS NOT NULL\",", "tests/scp_node/test_operations.py::test_a_study_is_not_marked_reported_when_an_instance_arrived_during_its_report"),
 ("21 a reconstruction below JPEG is stored", "dicom_cae/metrics.py", "not_below", "return all(test[k] <= jpeg[k] if k in LOWER_IS_BETTER else test[k] >= jpeg[k]", "return True or all(test[k] <= jpeg[k] if k in LOWER_IS_BETTER else test[k] >= jpeg[k]", f"{F}::test_a_reconstruction_below_plain_jpeg_is_not_stored"),
 ("22 only all or nothing of the correction", "dicom_cae/metrics.py", "<module>", "MODEL_WEIGHTS = (1.0, 0.9, 0.75, 0.5, 0.25, 0.0)", "MODEL_WEIGHTS = (1.0, 0.0)", f"{F}::test_part_of_a_correction_is_stored_where_all_of_it_would_be_below_jpeg"),
 # Issue 19's nine behaviours.
 ("23 report's worst window is the best", "dicom_cae/report.py", "_worst_window", 'worst = min(per_window, key=lambda w: w["psnr"])', 'worst = max(per_window, key=lambda w: w["psnr"])', f"{F}::test_the_reports_worst_window_column_is_the_worst_window_recomputed_from_the_pixels"),
 ("24 guard in the best window", "dicom_cae/guard.py", "FrameQuality.scores", '"display_psnr": min((q.quality.psnr for q in self.shown), default=self.seed.psnr),', '"display_psnr": max((q.quality.psnr for q in self.shown), default=self.seed.psnr),', f"{F}::test_the_guard_compares_in_the_worst_window_not_the_best"),
 ("25 soft tissue only without any window", "dicom_cae/display.py", "windows", 'and not any(w.width <= SOFT_TISSUE[1] for w in out):', "and not out:", f"{F}::test_a_ct_that_names_only_wide_windows_is_measured_in_soft_tissue_too"),
 ("26 ratio search stops at the first size that cannot fit", "dicom_cae/targets.py", "choose_coding", "        if not fits(1):\n            continue", "        if not fits(1):\n            break", f"{F}::test_the_ratio_search_goes_on_to_smaller_sizes_when_a_larger_cannot_fit"),
 ("27 a smaller coding described as passed through when it was restored", "dicom_cae/pipeline.py", "Pipeline.finish", "        if r is None:", "        if prep.coding_size != 256 or r is None:", f"{F}::test_a_smaller_coding_is_described_by_the_weights_that_restore_it"),
 ("28 functional-group spacing copied", "dicom_cae/derive.py", "_regrid_functional_groups", "measures.PixelSpacing = [_ds(spacing[0] * row_scale), _ds(spacing[1] * col_scale)]", "measures.PixelSpacing = [_ds(spacing[0]), _ds(spacing[1])]", "tests/dicom_cae/test_derive.py::test_a_multi_frame_instance_scales_its_functional_group_spacing_and_counts_every_frame"),
 ("29 compression ratio of one frame", "dicom_cae/pipeline.py", "finish", "    ratio = prep.frames * image.SIZE * image.SIZE / sum(prep.jpeg_bytes)", "    ratio = image.SIZE * image.SIZE / sum(prep.jpeg_bytes)", "tests/dicom_cae/test_derive.py::test_a_multi_frame_instance_scales_its_functional_group_spacing_and_counts_every_frame"),
 ("30 UIDs ignore the value mapping", "dicom_cae/pipeline.py", "key", "    text = text if mapping == value_mapping.MINMAX else f\"{text}:{mapping}\"", "    text = text", "tests/dicom_cae/test_derive.py::test_other_value_mappings_give_other_uids_and_both_live_in_one_folder"),
 ("31 stand-in series ignores the study", "dicom_cae/identity.py", "identify", 'entropy_srcs=["stand-in series", study, ', 'entropy_srcs=["stand-in series", ', "tests/dicom_cae/test_derive.py::test_a_stand_in_series_uid_depends_on_the_study"),
 # Issue 15: the codec.
 ("32 mozjpeg's progressive stream kept", "dicom_cae/codec.py", "_trellis_encode", 'with open(baseline, "rb") as f:', 'with open(progressive, "rb") as f:', "tests/dicom_cae/test_codec.py::test_trellis_stream_is_plain_baseline_with_flat_tables_and_no_jfif"),
 ("33 JFIF segment kept", "dicom_cae/codec.py", "_trellis_encode", "return _segments_without_app0(f.read())", "return f.read()", "tests/dicom_cae/test_codec.py::test_trellis_stream_is_plain_baseline_with_flat_tables_and_no_jfif"),
 ("34 blocking not guarded", "dicom_cae/metrics.py", "<module>", 'LOWER_IS_BETTER = frozenset({"display_blockiness"})', "LOWER_IS_BETTER = frozenset()", f"{F}::test_a_reconstruction_with_more_blocking_than_plain_jpeg_is_not_stored"),
 ("35 the node gives up at once on a batch that lost its worker", "dicom_cae/runner.py", "Driver.outcomes", "(not lost or self._count(paths) <= self.policy.tries)", "(not lost)", "tests/dicom_cae/test_runner.py::test_the_node_tries_a_batch_that_lost_its_worker_again_then_file_by_file"),
 ("36 no file-by-file fallback after a lost worker", "dicom_cae/runner.py", "Driver.outcomes", "out = [self._alone(p) for p in paths]", "out = [Outcome(p, FAILED) for p in paths]", "tests/dicom_cae/test_runner.py::test_convert_runs_a_batch_that_lost_its_worker_file_by_file"),
 ("37 a full disk reported as bad input", "dicom_cae/runner.py", "run_batch", "if cause_of(exc) != INPUT:", "if False:", "tests/dicom_cae/test_runner.py::test_a_full_disk_is_not_reported_as_bad_input"),
 ("38 node reports without the original", "scp_node/node.py", "Node._complete", "report.write(folder, files=derived, sources=sources)", "report.write(folder, files=derived)", "tests/scp_node/test_node.py::test_the_node_report_shows_the_original_beside_the_derived_image"),
 ("39 Bland-Altman as original - reconstructed", "dicom_cae/report.py", "build", 'r["mean_reconstructed"] - r["mean_original"]', 'r["mean_original"] - r["mean_reconstructed"]', "tests/dicom_cae/test_report.py::test_the_agreement_statistics_have_their_signs_and_figures_from_the_tags"),
 ("40 a damaged file without a suffix passed over as not DICOM", "dicom_cae/convert.py", "<module>", 'DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima", "")', 'DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")', "tests/dicom_cae/test_convert.py::test_a_damaged_file_without_a_suffix_is_failed_not_passed_over_as_not_dicom"),
 ("41 the index's source column holds the study", "dicom_cae/convert.py", "_convert", "Entry(o.derived[1], o.derived[0], o.study, o.sop_instance, str(path), o.output)", "Entry(o.derived[1], o.derived[0], o.study, o.study, str(path), o.output)", "tests/dicom_cae/test_store.py::test_the_index_names_each_derived_instance_by_its_own_uids_and_its_source"),
 ("42 one failed reconstruction fails its batch", "dicom_cae/runner.py", "_reconstruct", "            out.append(exc)", "            raise", "tests/dicom_cae/test_runner.py::test_one_instance_whose_reconstruction_fails_fails_alone"),
 ("43 worker processes stop on their own Ctrl-C", "dicom_cae/engines/local.py", "_start_process", "    signal.signal(signal.SIGINT, signal.SIG_IGN)", "    pass", "tests/dicom_cae/test_convert.py::test_ctrl_c_stops_cleanly_and_a_rerun_completes[2]"),
 # Issue 15, this round: the block-edge filter after the model.
 ("44 the model's output not filtered", "dicom_cae/model/reconstructor.py", "Reconstructor._run", "if self.edge_filter and filter_edges and len(served):", "if False:", f"{F}::test_head_ct_at_the_defaults_shows_no_blocks_in_its_brain_window"),
 ("45 a step smaller than its neighbours explain made larger", "dicom_cae/codec.py", "smooth_block_edges", "excess = np.where(excess * step > 0, excess, 0.0)", "excess = excess", "tests/dicom_cae/test_codec.py::test_the_edge_filter_keeps_anatomy_edges_ramps_and_flat_images"),
 ("46 anatomy edges smoothed too", "dicom_cae/codec.py", "smooth_block_edges", "excess *= np.clip(1.0 - np.abs(excess) / limit, 0.0, 1.0)", "excess *= 1.0", "tests/dicom_cae/test_codec.py::test_the_edge_filter_keeps_anatomy_edges_ramps_and_flat_images"),
 ("47 the filter on the 256 grid for every coding", "dicom_cae/codec.py", "smooth_block_edges", "edges = block_edges(coding_size, out.shape[-1])", "edges = block_edges(SIZE, out.shape[-1])", "tests/dicom_cae/test_codec.py::test_the_edge_filter_works_on_the_grid_of_the_coding"),
 ("48 UIDs ignore the filter after the model", "dicom_cae/pipeline.py", "key", "return f\"{text}:{decoder}\" if decoder else text", "return text", "tests/dicom_cae/test_derive.py::test_the_filter_after_the_model_gives_other_uids"),
 ("66 the quantizer step not capped for the edge filter", "dicom_cae/codec.py", "smooth_block_edges", "steps = np.array([min(quantizer_step(int(q)), EDGE_STEP_CAP) for q in qualities], np.float32)", "steps = np.array([quantizer_step(int(q)) for q in qualities], np.float32)", "tests/dicom_cae/test_codec.py::test_the_edge_filter_spreads_a_step_as_its_arithmetic_says"),
 ("72 codings 224-160 filtered at half strength", "dicom_cae/codec.py", "edge_strength", "return EDGE_STRENGTH_128 if coding_size <= 128 else EDGE_STRENGTH_FULL", "return EDGE_STRENGTH_128 if coding_size < 256 else EDGE_STRENGTH_FULL", "tests/dicom_cae/test_codec.py::test_the_filter_is_at_full_strength_down_to_the_160_coding_and_half_at_128"),
 ("74 a partial correction's block edges not smoothed again", "dicom_cae/guard.py", "stored_candidates", "if edge_quality is not None:", "if False:", "tests/dicom_cae/test_fidelity.py::test_a_partial_correction_has_its_block_edges_smoothed_again"),
 ("75 the pipeline's guard not told the model's output was filtered", "dicom_cae/pipeline.py", "finish", "coding_size=prep.coding_size, edge_quality=prep.quality if edge_filter and coding_served else None)", "coding_size=prep.coding_size, edge_quality=None)", "tests/dicom_cae/test_fidelity.py::test_a_partial_correction_has_its_block_edges_smoothed_again"),
 ("76 the model's output not averaged over the input's flips", "dicom_cae/model/reconstructor.py", "Reconstructor._run", "stacked = np.concatenate([np.flip(x, axes) for axes in FLIPS[:flips]])", "stacked = np.concatenate([x for axes in FLIPS[:flips]])", "tests/dicom_cae/test_model.py::test_the_default_model_is_the_mean_over_four_flips_and_so_flips_with_its_input"),
 ("77 UIDs ignore the flips", "dicom_cae/model/reconstructor.py", "Reconstructor.decoder", "[f\"flips{self.flips}\"] if self.flips > 1 else [])", "[] if self.flips > 1 else [])", "tests/dicom_cae/test_derive.py::test_the_filter_after_the_model_gives_other_uids"),
 ("78 the flips not said in the Derivation Description", "dicom_cae/pipeline.py", "finish", "edge_filter=filtered, flips=flips,", "edge_filter=filtered, flips=1,", "tests/dicom_cae/test_fidelity.py::test_the_default_model_filters_its_block_edges_and_says_so"),
 ("67 the filter named where nothing of it is stored", "dicom_cae/pipeline.py", "finish", "if edge_filter and coding_served and any(weights) else None", "if edge_filter and coding_served else None", "tests/dicom_cae/test_fidelity.py::test_the_default_model_filters_its_block_edges_and_says_so"),
 # Issue 17: the PDF reuses the HTML's PNG data.
 ("49 the PNG data declared without its predictors", "dicom_cae/pdf.py", "Document.__bytes__", "/DecodeParms << /Predictor 15 /Colors 3", "/DecodeParms << /Predictor 1 /Colors 3", "tests/dicom_cae/test_report.py::test_the_pdf_shows_the_htmls_png_pixels_without_compressing_them_again"),
 ("50 any PNG taken for RGB", "dicom_cae/pdf.py", "png_data", "if (height, width, 3) != tuple(shape) or depth != 8 or colour != 2 or interlace != 0:", "if False:", "tests/dicom_cae/test_report.py::test_the_pdf_shows_the_htmls_png_pixels_without_compressing_them_again"),
 # Issue 18: the poison corpus through Orthanc.
 ("51 what is not an image passes unsaid in the plugin", "dicom_cae/orthanc_plugin.py", "Plugin.process", "if o.kind == runner.NOT_IMAGE and o.error is not None:", "if False:", "tests/dicom_cae/test_orthanc_plugin.py::test_a_study_of_poison_cases_derives_the_good_ones_and_records_the_bad"),
 # Issue 19, node side: forwarding.
 ("52 a refused C-STORE taken as stored", "scp_node/forward.py", "Forwarder.send", "if code in (0x0000, 0xB000, 0xB007, 0xB006):", "if code is not None:", "tests/scp_node/test_forward.py::test_a_refused_c_store_keeps_the_item_in_the_outbox_with_back_off_until_it_is_accepted"),
 ("53 the back-off does not grow", "scp_node/forward.py", "Forwarder._failed", "delay = backoff(item.attempts, self.fwd.retry_initial_s, self.fwd.retry_max_s)", "delay = backoff(0, self.fwd.retry_initial_s, self.fwd.retry_max_s)", "tests/scp_node/test_forward.py::test_a_refused_c_store_keeps_the_item_in_the_outbox_with_back_off_until_it_is_accepted"),
 ("54 a warning status taken as a failure", "scp_node/forward.py", "Forwarder.send", "if code in (0x0000, 0xB000, 0xB007, 0xB006):", "if code in (0x0000,):", "tests/scp_node/test_forward.py::test_a_refused_c_store_keeps_the_item_in_the_outbox_with_back_off_until_it_is_accepted"),
 # Issue 19, node side: settings reaching the worker processes.
 ("55 worker processes on the default value mapping", "dicom_cae/runner.py", "pipeline_for", "mapping=settings.mapping)", ")", "tests/scp_node/test_node.py::test_settings_reach_the_worker_processes_intact"),
 ("56 the node's pipeline decides over its configuration", "scp_node/worker.py", "Worker.__init__", "if (pipe.mapping, pipe.batch_size) != (cfg.value_mapping, cfg.batch_size):", "if False:", "tests/scp_node/test_node.py::test_settings_reach_the_worker_processes_intact"),
 ("57 a batch taken again after a Ctrl-C inside take", "dicom_cae/runner.py", "Driver.run", "            paths = pending.popleft()[0]\n            take(paths, out)", "            paths = pending[0][0]\n            take(paths, out)\n            pending.popleft()", "tests/dicom_cae/test_runner.py::test_a_ctrl_c_inside_the_callers_take_does_not_take_that_batch_twice"),
 ("58 a deflated dataset inflated whole to be measured", "scp_node/server.py", "inflated_size_within", "chunk = inflater.decompress(pending, 1 << 20)", "chunk = inflater.decompress(pending)", "tests/scp_node/test_poison.py::test_checking_a_deflate_bomb_holds_little_memory"),
 ("59 the inflation limit off by one", "scp_node/server.py", "inflated_size_within", "if total > limit:", "if total >= limit:", "tests/scp_node/test_poison.py::test_checking_a_deflate_bomb_holds_little_memory"),
 # Issue 19, node side: resends and conflicts.
 ("60 a second conflict copied over the first", "scp_node/worker.py", "Worker._conflict", "dest = self._copy_aside(item, self.cfg.conflicts_dir, f\".{item.digest[:12]}\")", "dest = self._copy_aside(item, self.cfg.conflicts_dir)", "tests/scp_node/test_poison.py::test_another_image_under_a_used_sop_instance_uid_is_set_aside"),
 ("61 the photometric interpretation left out of what is the same", "scp_node/worker.py", "<module>", '"HighBit", "PixelRepresentation", "PhotometricInterpretation", "RescaleSlope", "RescaleIntercept")', '"HighBit", "PixelRepresentation", "RescaleSlope", "RescaleIntercept")', "tests/scp_node/test_poison.py::test_what_gives_the_pixels_their_meaning_tells_a_conflict_from_a_resend"),
 # Issue 19, node side: the copies in kept/ and failed/ are durable.
 ("62 copies aside not fsync'd", "scp_node/worker.py", "Worker._copy_aside", "            os.fsync(f.fileno())", "            pass", "tests/scp_node/test_durability.py::test_the_order_of_durable_steps_seen_by_strace"),
 ("63 the folder of a copy aside not fsync'd", "scp_node/worker.py", "Worker._copy_aside", "        fsync_dir(dest.parent)", "        pass", "tests/scp_node/test_durability.py::test_the_order_of_durable_steps_seen_by_strace"),
 ("64 studies timed by the last instance of any study", "scp_node/state.py", "State.due_studies", '"SELECT study_uid FROM studies WHERE dirty = 1 AND last_received <= ?"', '"SELECT study_uid FROM studies WHERE dirty = 1 AND (SELECT MAX(last_received) FROM studies) <= ?"', "tests/scp_node/test_operations.py::test_each_study_is_due_after_its_own_quiet_time"),
 ("65 a reported study due again without new instances", "scp_node/state.py", "State.study_reported", '"UPDATE studies SET dirty = 0, reported_at = ?', '"UPDATE studies SET dirty = 1, reported_at = ?', "tests/scp_node/test_operations.py::test_each_study_is_due_after_its_own_quiet_time"),
 # Issue 18: a restart's queued study waits for Orthanc to start (the SIGKILL test with a real Orthanc
 # sees this only when Orthanc starts slowly; this test sets the order itself).
 ("68 the plugin asks Orthanc before it has started", "dicom_cae/orthanc_plugin.py", "Plugin._loop", "while not self.started.is_set() and not self.stopping.is_set():", "while False:", "tests/dicom_cae/test_orthanc_plugin_loop.py::test_a_study_queued_before_orthanc_has_started_waits_for_it"),
 ("69 the plugin's own stores taken for a modality sending", "dicom_cae/orthanc_plugin.py", "Plugin._post", "            self._own += 1  # counted before", "            pass  # counted before", "tests/dicom_cae/test_orthanc_plugin_loop.py::test_the_plugin_waits_while_a_modality_sends_and_not_for_its_own_stores"),
 ("70 the plugin does not wait while a modality sends", "dicom_cae/orthanc_plugin.py", "Plugin.receiving", "            return now - self._outside_at < RECEIVING_QUIET_S", "            return False", "tests/dicom_cae/test_orthanc_plugin_loop.py::test_the_plugin_waits_while_a_modality_sends_and_not_for_its_own_stores"),
 ("71 the wait for a sender without end", "dicom_cae/orthanc_plugin.py", "Plugin._yield_to_receiving", "while self.receiving() and time.monotonic() < end and not self.stopping.is_set():", "while self.receiving() and not self.stopping.is_set():", "tests/dicom_cae/test_orthanc_plugin_loop.py::test_the_plugin_waits_while_a_modality_sends_and_not_for_its_own_stores"),
 ("73 an earlier report left in Orthanc beside the current one", "dicom_cae/orthanc_plugin.py", "Plugin.process", "                    self._drop_earlier_reports(doc.parent.name, doc.stem)", "                    pass", "tests/dicom_cae/test_orthanc_plugin.py::test_a_study_reprocessed_with_another_quality_gets_another_derived_series"),
 # Issue 15: the model in bfloat16.
 ("79 bfloat16's output rounded to bfloat16", "dicom_cae/model/architectures.py", "build_deblock", 'tail = {"dtype": "float32"} if body else {}', "tail = body", "tests/dicom_cae/test_model.py::test_bfloat16_runs_the_convolutions_in_bfloat16_and_adds_the_correction_in_float32"),
 ("80 UIDs ignore the precision", "dicom_cae/model/reconstructor.py", "Reconstructor.decoder", 'parts = ([self.precision] if self.precision != "float32" else [])', "parts = ([] if self.precision != \"float32\" else [])", "tests/dicom_cae/test_derive.py::test_bfloat16_gives_other_uids_and_says_so"),
 ("81 the precision not said in the Derivation Description", "dicom_cae/pipeline.py", "finish", "flips=flips, precision=precision,", "flips=flips, precision=\"float32\",", "tests/dicom_cae/test_derive.py::test_bfloat16_gives_other_uids_and_says_so"),
 ("82 bfloat16 chosen without bfloat16 units", "dicom_cae/precision.py", "resolve", "not gpu and any(f in flags for f in BFLOAT16_CPU_FLAGS)", "not gpu", "tests/dicom_cae/test_model.py::test_the_precision_is_float32_unless_bfloat16_units_or_the_setting_say_otherwise"),
 ("83 the float32 setting ignored", "dicom_cae/precision.py", "resolve", 'if setting != "auto":', 'if setting == "bfloat16":', "tests/dicom_cae/test_model.py::test_the_precision_is_float32_unless_bfloat16_units_or_the_setting_say_otherwise"),
 ("84 a deeper deblock's new layers not started as the identity", "dicom_cae/model/train.py", "_deepened", "eye[k.shape[0] // 2, k.shape[1] // 2] = np.eye(k.shape[2], dtype=k.dtype)", "eye[0, 0] = np.eye(k.shape[2], dtype=k.dtype)", "tests/dicom_cae/test_train.py::test_a_deeper_deblock_starts_as_the_one_it_starts_from"),
 ("85 --precision not passed to training", "dicom_cae/model/train.py", "_train", "model = build(cfg.model, precision=cfg.precision)", "model = build(cfg.model)", "tests/dicom_cae/test_train.py::test_training_in_bfloat16_keeps_float32_weights_and_says_so"),
 ("86 workers choose their own precision", "dicom_cae/runner.py", "pipeline_for", "load(settings.model, weights=settings.weights, precision=settings.precision)", "load(settings.model, weights=settings.weights)", "tests/dicom_cae/test_scale_out.py::test_workers_compute_in_the_precision_this_process_chose"),
 ("87 a worker computing in another precision not refused", "dicom_cae/runner.py", "run_batch", "if wanted and pipe.reconstructor.precision != wanted:", "if False:", "tests/dicom_cae/test_scale_out.py::test_workers_compute_in_the_precision_this_process_chose"),
 ("88 the settings' precision chosen through the model (TensorFlow in a process that loads none)", "dicom_cae/runner.py", "Settings.build", "target, batch_size, identity, site.resolve(precision))", "target, batch_size, identity, __import__('dicom_cae.model.reconstructor', fromlist=['x']).choose_precision(name, setting=precision))", "tests/dicom_cae/test_scale_out.py::test_settings_are_decided_without_tensorflow"),
 ("89 the precision not recorded in the derived instance", "dicom_cae/pipeline.py", "finish", "edge_filter=filtered, precision=precision if coding_served else None)", "edge_filter=filtered)", "tests/dicom_cae/test_report.py::test_the_model_row_names_the_precision_the_model_computed_in"),
 ("90 the report's Model row without the precision", "dicom_cae/report.py", "build", '+ (f", convolutions in {r[\'precision\']}" if r.get("precision") else "")', '+ ""', "tests/dicom_cae/test_report.py::test_the_model_row_names_the_precision_the_model_computed_in"),
 ("91 one image's limits of agreement drawn at the bias", "dicom_cae/report.py", "build", "sd = float(diffs.std(ddof=1)) if len(diffs) > 1 else math.nan", "sd = float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0", "tests/dicom_cae/test_report.py::test_one_image_has_a_bias_but_no_limits_of_agreement"),
 ("92 a partial correction smoothed at the filter's full strength", "dicom_cae/guard.py", "stored_candidates", "strength=(1.0 - weight) * codec.edge_strength(coding_size))[0]", "strength=codec.edge_strength(coding_size))[0]", f"{F}::test_a_partial_correction_is_smoothed_only_as_much_as_jpegs_share_brought_back"),
 ("93 the guard tries the weights from 1 down, not as a viewer sees them", "dicom_cae/guard.py", "ranked_weights", "return tuple(w for _, w in sorted(zip(seen, weights), key=lambda sw: -sw[0]))", "return weights", f"{F}::test_the_guard_stores_the_weight_whose_image_a_viewer_sees_best"),
]


def span(path: pathlib.Path, qualname: str) -> tuple[int, int]:
    """Character offsets of the definition ``qualname`` (a.b for nested or methods), or the
    whole file for "<module>". Raises KeyError when it is not there."""
    text = path.read_text()
    if qualname == "<module>":
        return 0, len(text)
    nodes: list[ast.AST] = [ast.parse(text)]
    for part in qualname.split("."):
        found = [n for parent in nodes for n in ast.walk(parent)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == part]
        if not found:
            raise KeyError(qualname)
        nodes = found[:1]
    node = nodes[0]
    lines = text.splitlines(keepends=True)
    start = sum(len(line) for line in lines[: node.lineno - 1])
    end = sum(len(line) for line in lines[: node.end_lineno])
    return start, end


def main() -> int:
    only = sys.argv[1:]
    survived = 0
    for name, path, where, old, new, test in M:
        if only and name.split()[0] not in only:
            continue
        p = ROOT / path
        text = p.read_text()
        try:
            a, b = span(p, where)
        except KeyError:
            print(f"{name}: TARGET NOT FOUND (no {where} in {path})", flush=True)
            survived += 1
            continue
        if text[a:b].count(old) != 1:
            print(f"{name}: TARGET NOT FOUND (the statement is in {where} {text[a:b].count(old)} times)", flush=True)
            survived += 1
            continue
        p.write_text(text[:a] + text[a:b].replace(old, new) + text[b:])
        try:
            r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", test], cwd=ROOT,
                               capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=900)
            last = (r.stdout.strip().splitlines() or ["?"])[-1]
            killed = r.returncode == 1 and " failed" in last  # a test failed (not: an error, or no test found)
            survived += not killed
            print(f"{name}: {'KILLED' if killed else 'SURVIVED'} ({last})", flush=True)
        finally:
            p.write_text(text)
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
