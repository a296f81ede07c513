"""The Markdown report and its figures, built only from a run directory's result files (build.build_report), one
module per section, plus the Prefect UI's copy (prefect_ui) and the committable result files (results)."""
