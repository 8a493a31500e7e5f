"""The split names every stage shares."""

DEV = "dev"  # scored once per model, for the record
TUNE = "val"  # the tuning split: every choice (per-epoch scores, the report's pick) is made on it
