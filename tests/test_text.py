"""asr.text: normaliser behaviour across scripts, vocabularies, the processor and tokenizer coverage."""

from __future__ import annotations

import json
import logging
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr.constants import PAD, UNK, WORD_DELIMITER
from asr.text import (
    DEFAULT_REMOVE_CHARS,
    NORMALIZER_FILE,
    CoverageReport,
    TextNormalizer,
    build_vocab,
    encode,
    load_processor,
    make_processor,
    save_processor,
    vocab_from_tokenizer,
)

URDU = "یہ کتاب میری ہے۔ کیا آپ، کل آئیں گے؟"
ARABIC = "هَلْ أَنْتَ بِخَيْرٍ؟ نَعَمْ، شُكْرًا!"

# (raw text, expected output of the default TextNormalizer)
DEFAULT_CASES = [
    ("Hello, World! It’s “fine”.", "hello world it's fine"),
    ("I can‘t; you CAN'T.", "i can't you can't"),
    ("rock'n'roll", "rock'n'roll"),
    ("Rockʼnʼroll, `90s and don´t", "rock'n'roll 90s and don't"),  # modifier letter, grave, acute
    ("'Tis the dogs' bones.'", "tis the dogs bones"),  # apostrophes outside words go
    ("‘quoted’ words", "quoted words"),
    ("Room 101, floor 3.5 at 10:30", "room 101 floor 3 5 at 10 30"),  # digits kept, separators go
    ("e-mail / R&D_team (v2) [note] a|b", "e mail r d team v2 note a b"),
    ("  tabs\tand\nnew lines\u00a0and  nbsp ", "tabs and new lines and nbsp"),
    ("", ""),
    ("?!…", ""),
    (URDU, "یہ کتاب میری ہے کیا آپ کل آئیں گے"),  # ۔ ، ؟ are punctuation; letters untouched
    (ARABIC, "هَلْ أَنْتَ بِخَيْرٍ نَعَمْ شُكْرًا"),  # tashkeel (combining marks) kept
    ("ﻻ ﺑﺄﺱ", "لا بأس"),  # presentation forms fold to base letters under NFKC
    ("Ёлка, ЁЖИК и Щука!", "ёлка ёжик и щука"),
    ("Ça coûte 5€", "ça coûte 5"),
    ("Grüße aus Köln — ½ ²", "grüße aus köln 1 2 2"),  # ß kept (lower, not casefold); NFKC: ½ -> 1⁄2
    ("ＦＵＬＬ ｗｉｄｔｈ ﬁne", "full width fine"),
    ("rockŉroll", "rock'nroll"),  # NFKC: ŉ -> U+02BC n, itself an apostrophe variant
    ("😀 emoji + math ≤ ∑", "emoji math"),
]


@pytest.mark.parametrize(("raw", "expected"), DEFAULT_CASES)
def test_default_normalizer(raw, expected):
    normalizer = TextNormalizer()
    assert normalizer(raw) == expected
    assert normalizer(expected) == expected  # idempotent


def test_unicode_forms_differ_as_documented():
    decomposed = "c\u0327a cou\u0302te"  # "ça coûte" typed with combining marks
    assert TextNormalizer(unicode_form="NFC")(decomposed) == "ça coûte"
    assert TextNormalizer(unicode_form="NFKC")(decomposed) == "ça coûte"
    assert TextNormalizer(unicode_form="NFD")("Ça coûte") == decomposed
    assert TextNormalizer(unicode_form=None)(decomposed) == decomposed  # bytes as given
    assert TextNormalizer(unicode_form="NFC")("ﬁne ½") == "ﬁne ½"  # compatibility characters survive NFC
    assert TextNormalizer(unicode_form="NFKC")("ﬁne ½") == "fine 1 2"
    assert TextNormalizer(unicode_form="NFD")("Ёж") == "е\u0308ж"
    assert len(TextNormalizer(unicode_form="NFD")("أ")) == 2  # alef + hamza above
    assert len(TextNormalizer(unicode_form="NFC")("أ")) == 1


@pytest.mark.parametrize(("normalizer", "raw", "expected"), [
    (TextNormalizer(lowercase=False), "Hello, World!", "Hello World"),
    (TextNormalizer(keep_apostrophes=False), "Don’t 'stop' rock'n'roll", "dont stop rocknroll"),
    (TextNormalizer(remove_chars=""), "a,  b! ‘c’ d's", "a, b! c d's"),  # quotes still go
    (TextNormalizer(remove_chars=r"(?![-'])[\p{P}\p{S}]"), "E-mail, well-known!", "e-mail well-known"),
    (TextNormalizer(delete_chars=r"\p{Mn}"), ARABIC, "هل أنت بخير نعم شكرا"),  # strip tashkeel
    (TextNormalizer(unicode_form="NFKD", delete_chars=r"\p{Mn}"), "Ça coûte", "ca coute"),  # strip accents
    (TextNormalizer(replacements=(("&", " and "), ("ك", "ک"))), "R&D كتاب", "r and d کتاب"),
    (TextNormalizer(replacements=(("ـ", ""),)), "كتـــاب", "كتاب"),  # tatweel is a letter (Lm): opt-in
])
def test_configured_normalizers(normalizer, raw, expected):
    assert normalizer(raw) == expected


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"unicode_form": "nfc"}, "unicode_form"),
    ({"remove_chars": "[unclosed"}, "not a valid regex"),
    ({"delete_chars": "(?<"}, "delete_chars"),
    ({"replacements": (("Mr.", "mister"),)}, "uppercase"),
    ({"replacements": (("a", "b", "c"),)}, "pair"),
    ({"replacements": (("", "x"),)}, "pair"),
])
def test_invalid_normalizer_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TextNormalizer(**kwargs)


def test_normalizer_dict_and_file_round_trip(tmp_path):
    normalizer = TextNormalizer(unicode_form="NFC", keep_apostrophes=False, replacements=(("&", " and "),))
    assert TextNormalizer.from_dict(json.loads(json.dumps(normalizer.to_dict()))) == normalizer
    path = normalizer.save(tmp_path / "model")
    assert path.name == NORMALIZER_FILE
    assert TextNormalizer.load(tmp_path / "model") == normalizer
    assert TextNormalizer.load(path) == normalizer
    assert json.loads(path.read_text(encoding="utf-8"))["remove_chars"] == DEFAULT_REMOVE_CHARS
    assert hash(normalizer) == hash(TextNormalizer.load(path))  # frozen: usable as a cache key
    assert TextNormalizer.from_dict({}) == TextNormalizer()
    with pytest.raises(ValueError, match="unknown keys"):
        TextNormalizer.from_dict({"lowercase": True, "lower_case": True})
    with pytest.raises(FileNotFoundError, match=NORMALIZER_FILE):
        TextNormalizer.load(tmp_path / "nowhere")


def test_build_vocab_convention_english():
    vocab = build_vocab(["hello world", "it's a test"])
    assert list(vocab.items())[:3] == [(PAD, 0), (UNK, 1), (WORD_DELIMITER, 2)]
    chars = list(vocab)[3:]
    assert chars == sorted(set("helloworlditsatest'"))
    assert list(vocab.values()) == list(range(len(vocab)))
    assert " " not in vocab


@pytest.mark.parametrize("texts", [
    [TextNormalizer()(URDU), "اردو زبان"],
    [TextNormalizer()(ARABIC)],
    ["ёлка ёжик", "щука"],
    ["ça coûte 5", "grüße aus köln"],
    [TextNormalizer(unicode_form="NFD")("Ça coûte")],  # combining marks are characters too
])
def test_build_vocab_any_script(texts):
    vocab = build_vocab(texts)
    assert [vocab[t] for t in (PAD, UNK, WORD_DELIMITER)] == [0, 1, 2]
    chars = list(vocab)[3:]
    assert chars == sorted(chars, key=ord)
    assert set(chars) == set("".join(texts)) - {" "}
    assert build_vocab(reversed(texts)) == vocab  # depends on the characters only
    assert all(encode(t, vocab).count(vocab[UNK]) == 0 for t in texts)


def test_build_vocab_rejects_word_delimiter_and_skips_other_whitespace(caplog):
    with pytest.raises(ValueError, match="word delimiter"):
        build_vocab(["a|b"])
    with caplog.at_level(logging.WARNING, logger="asr.text"):
        vocab = build_vocab(["a\tb", "c\nd"])
    assert set(vocab) == {PAD, UNK, WORD_DELIMITER, "a", "b", "c", "d"}
    assert "whitespace" in caplog.text
    assert build_vocab([]) == {PAD: 0, UNK: 1, WORD_DELIMITER: 2}


TEXTS = [TextNormalizer()(t) for t in
         ["Hello, world! It's rock'n'roll.", "Ёлка и ёжик", URDU, ARABIC, "Ça coûte 5€", "   "]]


@pytest.fixture(scope="module")
def processor():
    return make_processor(build_vocab(TEXTS), return_attention_mask=False)


def test_make_processor(processor):
    tokenizer, extractor = processor.tokenizer, processor.feature_extractor
    vocab = build_vocab(TEXTS)
    assert tokenizer.get_vocab() == vocab and len(tokenizer) == len(vocab)  # no bos/eos appended
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.word_delimiter_token_id) == (0, 1, 2)
    assert tokenizer.do_lower_case is False
    assert (extractor.feature_size, extractor.sampling_rate, extractor.padding_value) == (1, 16_000, 0.0)
    assert extractor.do_normalize is True and extractor.return_attention_mask is False


@pytest.mark.parametrize("text", TEXTS + ["unseen chars: ß and ж together", "two  spaces ", " lead"])
def test_encode_agrees_with_tokenizer(processor, text):
    vocab = processor.tokenizer.get_vocab()
    ids = encode(text, vocab)
    assert ids == processor.tokenizer(text).input_ids
    assert ids == processor(text=text).input_ids
    assert len(ids) == len(text)


@pytest.mark.parametrize("text", [t for t in TEXTS if t])
def test_tokenizer_decodes_labels_back_to_text(processor, text):
    tokenizer = processor.tokenizer
    ids = encode(text, tokenizer.get_vocab())
    assert tokenizer.decode(ids, group_tokens=False) == text
    # A CTC path: each label repeated, blanks between, which greedy decoding must collapse.
    path = [0]
    for i in ids:
        path += [i, i, 0]
    assert tokenizer.decode(path) == text
    assert tokenizer.batch_decode([path, path]) == [text, text]


def test_encode_unknown_characters_and_bad_vocab():
    vocab = build_vocab(["ab"])
    assert encode("a c b", vocab) == [vocab["a"], 2, 1, 2, vocab["b"]]
    with pytest.raises(ValueError, match=r"\[UNK\]"):
        encode("ab", {"a": 0, "b": 1, "|": 2})


@pytest.mark.parametrize("return_attention_mask", [False, True])
def test_save_and_load_processor(tmp_path, monkeypatch, return_attention_mask):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    normalizer = TextNormalizer(replacements=(("&", " and "),))
    texts = [normalizer(t) for t in TEXTS]
    processor = make_processor(build_vocab(texts), return_attention_mask=return_attention_mask, do_normalize=False)
    out = save_processor(processor, normalizer, tmp_path / "processor")
    assert {"vocab.json", "tokenizer_config.json", NORMALIZER_FILE} <= {p.name for p in out.iterdir()}
    loaded, loaded_normalizer = load_processor(out)
    assert loaded_normalizer == normalizer
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert len(loaded.tokenizer) == len(processor.tokenizer)
    assert loaded.feature_extractor.return_attention_mask is return_attention_mask
    assert loaded.feature_extractor.do_normalize is False
    for text in texts:
        assert loaded.tokenizer(text).input_ids == encode(text, processor.tokenizer.get_vocab())
    # The vocabulary file stays readable for any script.
    assert "ё" in (out / "vocab.json").read_text(encoding="utf-8")


def test_load_processor_needs_normalizer(tmp_path, processor):
    processor.save_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=NORMALIZER_FILE):
        load_processor(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_processor(tmp_path / "missing")


@pytest.mark.parametrize(("vocab", "match"), [
    ({"<pad>": 0, "<unk>": 1, "|": 2, "a": 3}, "special tokens"),
    ({PAD: 0, UNK: 1, WORD_DELIMITER: 2, "a": 4}, "0..3"),
    ({PAD: 0, UNK: 1, WORD_DELIMITER: 2, "a": 2}, "0..3"),
])
def test_make_processor_rejects_bad_vocab(vocab, match):
    with pytest.raises(ValueError, match=match):
        make_processor(vocab, return_attention_mask=False)


def _uppercase_english_tokenizer(tmp_path, *, do_lower_case: bool, with_delimiter: bool = True):
    """A tokenizer shaped like facebook/wav2vec2-base-960h's: specials, then | and A-Z and '."""
    from transformers import Wav2Vec2CTCTokenizer

    tokens = ["<pad>", "<s>", "</s>", "<unk>"] + (["|"] if with_delimiter else []) + list("ETAONIHSRDLUMWCFGYPBVK'XJQZ")
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    return Wav2Vec2CTCTokenizer(str(path), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|",
                                do_lower_case=do_lower_case)


def test_coverage_of_uppercase_tokenizer(tmp_path, caplog):
    tokenizer = _uppercase_english_tokenizer(tmp_path, do_lower_case=False)
    texts = ["hello world", "café au lait", "NAÏVE"]
    with caplog.at_level(logging.WARNING, logger="asr.text"):
        vocab, report = vocab_from_tokenizer(tokenizer, texts)
    assert vocab == tokenizer.get_vocab() and list(vocab.values()) == sorted(vocab.values())
    assert isinstance(report, CoverageReport)
    assert (report.pad_token, report.pad_token_id, report.word_delimiter_token_id) == ("<pad>", 0, 4)
    assert report.num_texts == 3 and report.num_chars == 10 + 10 + 5
    missing = {m.char: m for m in report.missing}
    assert set(missing) == set("helowrdcaféuit") | {"Ï"}
    assert missing["l"].count == 4 and missing["l"].example == "hello world"
    assert missing["é"].name == "LATIN SMALL LETTER E WITH ACUTE" and missing["é"].example == "café au lait"
    assert report.num_unknown == 20 + 1 and report.coverage == pytest.approx(4 / 25)
    assert report.missing[0].char == "l"  # most frequent first
    assert not report.ok and "not in the tokenizer's vocabulary" in caplog.text
    json.dumps(report.to_dict())  # reports go into run logs as JSON
    assert report.to_dict()["coverage"] == pytest.approx(report.coverage)


def test_coverage_follows_do_lower_case(tmp_path):
    tokenizer = _uppercase_english_tokenizer(tmp_path, do_lower_case=True)
    _, report = vocab_from_tokenizer(tokenizer, ["hello world", "café au lait"])
    assert report.do_lower_case
    assert [(m.char, m.count, m.example) for m in report.missing] == [("É", 1, "café au lait")]
    _, report = vocab_from_tokenizer(tokenizer, ["it's fine"])
    assert report.ok and report.coverage == 1.0


def test_coverage_of_our_own_processor(processor):
    _, report = vocab_from_tokenizer(processor.tokenizer, TEXTS)
    assert report.ok and (report.pad_token_id, report.word_delimiter_token_id) == (0, 2)
    assert report.num_chars == sum(len(t.replace(" ", "")) for t in TEXTS)


def test_coverage_requires_word_delimiter(tmp_path):
    tokenizer = _uppercase_english_tokenizer(tmp_path, do_lower_case=True, with_delimiter=False)
    with pytest.raises(ValueError, match="word delimiter"):
        vocab_from_tokenizer(tokenizer, ["hello"])


def test_unicode_names_in_report_tell_look_alikes_apart(tmp_path):
    tokenizer = _uppercase_english_tokenizer(tmp_path, do_lower_case=False)
    _, report = vocab_from_tokenizer(tokenizer, ["А"])  # Cyrillic A, looks like Latin A
    assert report.missing[0].name == unicodedata.name("А") == "CYRILLIC CAPITAL LETTER A"


# Text from every script and category, including the characters the normaliser treats specially.
_ANY_TEXT = st.text(
    alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from("'’‘ʼ`´′|[]  \t\nَْ۔،؟ёÇ")),
    max_size=40,
)


@settings(max_examples=300, deadline=None, database=None)
@given(raw=_ANY_TEXT)
def test_normalizer_fuzz(raw):
    normalizer = TextNormalizer()
    text = normalizer(raw)
    assert text == text.strip() and "  " not in text and WORD_DELIMITER not in text
    assert not any(c.isspace() and c != " " for c in text)
    assert normalizer(text) == text


@settings(max_examples=100, deadline=None, database=None)
@given(raw=_ANY_TEXT)
def test_encode_agrees_with_tokenizer_fuzz(processor, raw):
    text = TextNormalizer()(raw)
    assert encode(text, processor.tokenizer.get_vocab()) == processor.tokenizer(text).input_ids
