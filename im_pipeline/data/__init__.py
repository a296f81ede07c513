"""Data layer: sources (registered name | local file | Hub id), normalisation to messages, policies,
Table-5 length statistics, seeded subsampling / ratio-targeted selection, held-out split."""

from im_pipeline.data.files import read_jsonl, write_jsonl
from im_pipeline.data.normalise import DataError, normalise_record
from im_pipeline.data.prepare import (
    PreparedData,
    held_out_kind,
    in_domain_data,
    local_copy_missing,
    prepare_data,
    seed_data,
)
from im_pipeline.data.select import seed_sample, select_by_ratio, split_held_out, subsample
from im_pipeline.data.sources import REGISTRY, DatasetSpec, load_records
from im_pipeline.data.stats import example_lengths, length_stats

__all__ = [
    "REGISTRY",
    "DataError",
    "DatasetSpec",
    "PreparedData",
    "example_lengths",
    "held_out_kind",
    "in_domain_data",
    "length_stats",
    "load_records",
    "local_copy_missing",
    "normalise_record",
    "prepare_data",
    "read_jsonl",
    "seed_data",
    "seed_sample",
    "select_by_ratio",
    "split_held_out",
    "subsample",
    "write_jsonl",
]
