"""Benchmarks: each module measures one of the toolkit's speed or memory targets against the usual alternative
and prints a markdown table (`--output DIR` also writes DIR/<name>.md and .json).

Run from the repository root, by path or as a module: `.venv/bin/python bench/decode.py --help` or
`.venv/bin/python -m bench.decode --help`. `bench.common` holds what they share (timing, peak RSS of a fresh
process, tables). The library (`asr/`, `lm/`) never imports this package, and the wheel does not ship it.
"""
