"""Analysis of a run's result files: reading the run directory (run_files), aggregation (aggregate), paired
statistics (stats), the pre-registered hypotheses (hypotheses, hypothesis_tests), the length-ratio analysis
(length_ratio) and advice before running (advise)."""
