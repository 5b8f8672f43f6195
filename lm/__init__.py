"""KenLM n-gram language models for CTC beam search: build with lmplz/build_binary, write pyctcdecode's layout."""

from lm.build import (
    INFO_FILE,
    CorpusReport,
    HeldoutReport,
    LMBuildOptions,
    LMInfo,
    UnemittableChar,
    build_lm,
    emittable_chars,
    evaluate_heldout,
    find_kenlm_tool,
    load_lm_info,
    load_model_text_config,
    prepare_corpus,
    read_source_texts,
    read_text_files,
    split_heldout,
)

__all__ = [
    "INFO_FILE",
    "CorpusReport",
    "HeldoutReport",
    "LMBuildOptions",
    "LMInfo",
    "UnemittableChar",
    "build_lm",
    "emittable_chars",
    "evaluate_heldout",
    "find_kenlm_tool",
    "load_lm_info",
    "load_model_text_config",
    "prepare_corpus",
    "read_source_texts",
    "read_text_files",
    "split_heldout",
]
