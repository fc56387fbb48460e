"""Command-line tools of ultralytics-ema."""
