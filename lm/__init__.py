"""KenLM n-gram language models for CTC beam search: build with lmplz/build_binary, write pyctcdecode's layout."""

from lm.build import (
    KENLM_BIN_ENV,
    CorpusReport,
    HeldoutReport,
    KenLMNotFoundError,
    LMBuildOptions,
    LMInfo,
    UnemittableChar,
    build_lm,
    declare_lm_processor,
    emittable_chars,
    evaluate_heldout,
    find_kenlm_tool,
    prepare_corpus,
    read_text_files,
    split_heldout,
)

__all__ = [
    "KENLM_BIN_ENV",
    "CorpusReport",
    "HeldoutReport",
    "KenLMNotFoundError",
    "LMBuildOptions",
    "LMInfo",
    "UnemittableChar",
    "build_lm",
    "declare_lm_processor",
    "emittable_chars",
    "evaluate_heldout",
    "find_kenlm_tool",
    "prepare_corpus",
    "read_text_files",
    "split_heldout",
]
