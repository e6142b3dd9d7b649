#!/usr/bin/env python3
"""Generate the tokenizer fixtures under tests/fixtures/tokenizers/ (tests/data_tokenizer_test.cpp).

  bpe/tokenizer.json, bpe/tokenizer_config.json
      a GPT-NeoX-like byte-level BPE trained here with the `tokenizers` library on CORPUS
      (vocab 1000, NFC, ByteLevel add_prefix_space=false, <|endoftext|> = 0, <|padding|> = 1,
      plus added tokens: runs of spaces like NeoX's, a raw tab run, special tokens with
      lstrip/rstrip, a single_word token, NFD-content tokens, normalized and not)
  tiny_unk/tokenizer.json, tiny_fallback/tokenizer.json
      hand-written tiny BPEs for the rarer model options (unk_token, fuse_unk, ignore_merges,
      byte_fallback, add_prefix_space, use_regex=false, a merge listed twice)
  sp/tokenizer.model
      a SentencePiece BPE (vocab 500, byte_fallback, identity normalization, pad id 3, a
      user-defined symbol) trained on the same corpus
  cases.jsonl
      one line per test string (TEST_CASES, none of them the training text): its NFC, the GPT-2
      pre-tokenizer pieces, and for every tokenizer the reference ids and decodes; then the
      ill-formed UTF-8 cases (INVALID_UTF8, input as hex) -- see below
  nfc.jsonl
      NFC reference strings from the tokenizers NFC normalizer: every character with a
      canonical decomposition (as is and decomposed), marks in scrambled order, Hangul jamo
  versions.json
      library versions and what made the files

Ill-formed UTF-8 cannot reach the tokenizers library (Python str / Rust &str are valid
UTF-8). The C++ tokenizer keeps such bytes as "other" characters, each byte through the
byte-level map. Its reference ids come from an emulation with the library's own parts:
decode with surrogateescape (one lone surrogate per bad byte; category Cs, so "other" for
the GPT-2 pattern too), NFC, split with the GPT-2 pattern (the `regex` module), map each
piece's original bytes to byte-level characters, and run the library's BPE model on it
(`tokenizer.model.tokenize`). The emulation is checked against the library's encode() on
every valid test string it applies to. Decodes are the library's decode() of those ids.

Usage (from the repository root; see data_scripts/README.md, "Tokenizer fixtures"):
    /tmp/fxenv/bin/python data_scripts/make_tokenizer_fixtures.py --out tests/fixtures/tokenizers
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import sys
import unicodedata

import regex
import sentencepiece as spm
import tokenizers
from tokenizers import AddedToken, Tokenizer, normalizers

from neox_tokenizer import neox_like_bpe

GENERATOR = "data_scripts/make_tokenizer_fixtures.py"

CORPUS = """\
The quick brown fox jumps over the lazy dog. It's a sunny day, isn't it? We'll see.
I've been reading about tokenizers: they split text into pieces, then merge bytes by rank.
Numbers like 12, 345, 6789 and 3.14159 appear in text; so do dates like 2024-05-17.
She said: "Don't worry, you're fine." He'd rather stay home; they'd go out.
Über den Wolken muss die Freiheit wohl grenzenlos sein. Schöne Grüße aus Köln und Düsseldorf!
Die Straße ist nass, die Bäume sind grün, und das Mädchen läuft über die Brücke.
日本語の文章はスペースで区切られません。東京は日本の首都です。
中文文本也没有空格。我们今天学习分词。北京欢迎你。
Emoji time 😀 😂 👍 🎉 ❤️ 🇩🇪 — smileys and flags. 👩‍💻 writes code.
مرحبا بكم في عالم اللغة العربية. الكتابة من اليمين إلى اليسار.
Combining marks in decomposed form: Cafe\u0301, nai\u0308ve, Zu\u0308rich, A\u030angstro\u0308m.
Tabs\tseparate\tcolumns\tin\tthis\tline.
Windows line endings\r\nare two characters\r\nlong.
Runs of spaces:  two,   three,    four,        eight.
    def tokenize(text):
        return [t for t in text.split() if t]
Contractions: I'm, you're, he's, we've, they'll, I'd, can't, won't.
Ελληνικά γράμματα: α β γ δ. Русский текст: привет, мир!
Hangul 한국어 문장입니다. Thai ภาษาไทย. Hindi हिन्दी पाठ.
The year 1999 had 365 days; 2000 had 366. Call 555-0123 or +49 30 1234567.
"""

# (name, text): what every tokenizer is checked on. Not the training text; the first words
# of several are unseen, so BPE falls back to short pieces.
TEST_CASES = [
    ("empty", ""),
    ("one_space", " "),
    ("three_spaces", "   "),
    ("seventeen_spaces", " " * 17),
    ("crlf", "\r\n"),
    ("crlf_text", "line one\r\nline two\r\n\r\nend"),
    ("newlines", "\n\n\na\n"),
    ("tab", "\t"),
    ("tabs_mixed", "col1\tcol2\t\tcol3 \t x"),
    ("hello", "Hello world"),
    ("double_space", "Hello  world"),
    ("leading_trailing", "  leading and trailing   "),
    ("contractions", "don't you're we've I'm he'll she'd it's"),
    ("contractions_upper", "DON'T YOU'RE I'M"),
    ("apostrophes", "'s 's' ''s rock'n'roll ' 'll"),
    ("digits", "1234567890123456789012345"),
    # The same pair at overlapping positions: the leftmost merges first.
    ("repeats", "aaaa eeee ssss .... ---- ==== 1111111 !!!!!! zzzzz \n\n\n\n ll lll llll"),
    ("numbers_mixed", "3.14159 and 2,718 or 1e-10; 42nd"),
    ("german", "Grüße aus München, die Straße ist schön."),
    ("german_nfd", "Gru\u0308\u00dfe aus Mu\u0308nchen"),
    ("cjk", "日本語のテキストと中文测试。"),
    ("korean", "한국어 텍스트"),
    ("hangul_jamo_nfd", "\u1112\u1161\u11ab\u1100\u1173\u11af"),
    ("emoji", "😀👍🏽🇩🇪 emoji 🎉!"),
    ("zwj_family", "👨\u200d👩\u200d👧\u200d👦 family"),
    ("arabic", "مرحبا بالعالم ١٢٣"),
    ("combining_order", "q\u0307\u0323 a\u0301\u0327 e\u0300\u0300"),
    ("singletons", "\u212b \u2126 \u1e9b\u0323"),
    ("ligature", "ﬁnal ﬀ"),
    ("unicode_spaces", "a\u00a0b\u3000c\u2028d\u2003e"),
    ("unicode_space_runs", "a\u3000\u3000b \u00a0c\u2003 d"),
    ("controls", "\u0000\u0001\u007f\u0085x\u001c"),
    ("unseen_words", "xylophone quizzical zephyr"),
    ("code", "def f(x):\n    return x**2  # comment\n"),
    ("math", "∑ x² ≤ ∞ ½ ⅓ Ⅻ"),
    ("fullwidth", "ＡＢＣ１２３"),
    ("added_eot", "a<|endoftext|>b"),
    ("added_eot_alone", "<|endoftext|>"),
    ("added_adjacent", "<|endoftext|><|padding|>text<|endoftext|>"),
    ("im_start_strip", "x  <|im_start|>  y"),
    ("im_start_newline", "hi\n<|im_start|>\nuser"),
    ("im_end", "answer<|im_end|> more"),
    ("rstrip_then_space_token", "<|im_start|>   x"),
    # rstrip takes all three tabs, yet the raw "\t\t" token found inside them is emitted too.
    ("rstrip_overlap_quirk", "<|im_start|>\t\t\tx"),
    ("lstrip_after_token", "a<|im_end|>  <|im_start|>b"),
    ("single_word", "[WORD] x[WORD] [WORD]y ([WORD]) é[WORD]"),
    ("normalized_added", "Café! Cafe\u0301!"),
    ("raw_added", "ne\u0301e vs née"),
    ("tab_token", "a\t\tb\t\t\tc"),
    ("sp_user_symbol", "<sep> text <sep>"),
    ("long_mixed", "In 2023, the Zürich–Berlin train (ICE 123) left at 07:45 — "
                   "passengers: 312; delay: 0 min. 東京→大阪 is 515 km. Das ist gut!  Fine…"),
]

# (name, bytes): ill-formed UTF-8 (see the module docstring). No added-token text in them.
INVALID_UTF8 = [
    ("lone_ff", b"abc\xff def"),
    ("truncated_cjk", b"x \xe4\xb8"),
    ("truncated_then_text", b"caf\xc3 ok"),
    ("surrogate", b"\xed\xa0\x80z"),
    ("overlong", b"\xc0\xaf!"),
    ("past_max", b"\xf4\x90\x80\x80 q"),
    ("stray_continuations", b"x\x80\x80y"),
    ("bad_in_word", b"Gr\xc3\xbc\xc3e \xfe\xfe"),
    ("only_bad", b"\x80"),
]

BPE_ADDED = [
    # NeoX-style whitespace tokens: raw spaces (not byte-mapped), normalized, not special.
    *[AddedToken(" " * n, normalized=True, special=False) for n in (2, 3, 4, 8)],
    AddedToken("\t\t", normalized=False, special=False),
    AddedToken("<|im_start|>", lstrip=True, rstrip=True, normalized=False, special=True),
    AddedToken("<|im_end|>", normalized=False, special=True),
    AddedToken("[WORD]", single_word=True, normalized=True, special=False),
    AddedToken("Cafe\u0301!", normalized=True, special=False),  # matched as NFC "Café!"
    AddedToken("ne\u0301e", normalized=False, special=False),  # only in raw NFD text
]


def byte_chars() -> list[str]:
    """GPT-2's bytes_to_unicode, indexed by byte."""
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


BYTE_CHARS = byte_chars()
GPT2_PATTERN = regex.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+"
    r"|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+")


def train_bpe() -> Tokenizer:
    tok, trainer = neox_like_bpe(1000)
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer)
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id("<|padding|>") == 1
    tok.add_tokens(BPE_ADDED)
    return tok


def tiny_tokenizer_json(variant: str) -> dict:
    """Hand-written tiny BPEs exercising the rarer options."""
    G = BYTE_CHARS[ord(" ")]
    vocab_tokens = ["<unk>", "a", "b", "c", "x", "ab", "bc", "abc", G + "a", G + "ab", "xa"]
    merges = [G + " a", "a b", "ab c", G + "a b", "b c", "x a", "a b"]  # "a b" twice: rank 6
    if variant == "tiny_unk":
        vocab_tokens += [G]
        model = dict(unk_token="<unk>", fuse_unk=True, byte_fallback=False, ignore_merges=True)
        pre = dict(type="ByteLevel", add_prefix_space=True, trim_offsets=True, use_regex=True)
    else:  # tiny_fallback: no "Ġ" and no "z"/"y" in the vocab; bytes of "Ġ" and "z" as <0x..>
        vocab_tokens += ["<0xC4>", "<0xA0>", "<0x7A>"]
        merges = [m for m in merges if not m.startswith(G)]
        model = dict(unk_token="<unk>", fuse_unk=False, byte_fallback=True, ignore_merges=False)
        pre = dict(type="ByteLevel", add_prefix_space=False, trim_offsets=True, use_regex=False)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [dict(id=0, content="<unk>", single_word=False, lstrip=False,
                              rstrip=False, normalized=False, special=True)],
        "normalizer": None,
        "pre_tokenizer": pre,
        "post_processor": None,
        "decoder": dict(type="ByteLevel", add_prefix_space=True, trim_offsets=True,
                        use_regex=True),
        "model": dict(type="BPE", dropout=None, continuing_subword_prefix=None,
                      end_of_word_suffix=None, **model,
                      vocab={t: i for i, t in enumerate(vocab_tokens)}, merges=merges),
    }


def train_sentencepiece() -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines()), model_writer=model, vocab_size=500,
        model_type="bpe", byte_fallback=True, character_coverage=0.995,
        normalization_rule_name="identity", pad_id=3, user_defined_symbols=["<sep>"],
        num_threads=1, minloglevel=2)
    return model.getvalue()


def hf_result(tok: Tokenizer, text: str) -> dict:
    ids = tok.encode(text, add_special_tokens=False).ids
    return dict(ids=ids, decoded=tok.decode(ids, skip_special_tokens=False),
                decoded_skip=tok.decode(ids, skip_special_tokens=True))


def sp_result(sp: spm.SentencePieceProcessor, text) -> dict:
    ids = sp.encode(text)
    kept = [i for i in ids if not (sp.is_control(i) or sp.is_unknown(i))]
    return dict(ids=ids, decoded=sp.decode(ids), decoded_skip=sp.decode(kept))


def emulate_bpe(tok: Tokenizer, data: bytes) -> list[int]:
    """The C++ encoder's ids for bytes without added tokens (module docstring)."""
    text = unicodedata.normalize("NFC", data.decode("utf-8", "surrogateescape"))
    ids = []
    for piece in GPT2_PATTERN.findall(text):
        mapped = "".join(BYTE_CHARS[b] for b in piece.encode("utf-8", "surrogateescape"))
        ids += [t.id for t in tok.model.tokenize(mapped)]
    return ids


def has_added_text(text: str) -> bool:
    contents = [t.content for t in BPE_ADDED] + ["<|endoftext|>", "<|padding|>"]
    nfc = unicodedata.normalize("NFC", text)
    return any(c in text or unicodedata.normalize("NFC", c) in nfc for c in contents)


def nfc_cases() -> list[dict]:
    nfc = normalizers.NFC()
    sep = "\x01"  # a starter that composes with nothing
    decomposable = [chr(cp) for cp in range(0x110000)
                    if not 0xD800 <= cp <= 0xDFFF and not 0xAC00 <= cp <= 0xD7A3
                    and unicodedata.decomposition(chr(cp))
                    and not unicodedata.decomposition(chr(cp)).startswith("<")]
    marks = [chr(cp) for cp in range(0x300, 0x370)] + ["\u0591", "\u05b0", "\u093c", "\u0e38",
                                                       "\u1dc0", "\u20d0", "\u302a", "\U0001d165"]
    rng = random.Random(20240517)
    scrambled = [rng.choice("aeouAEOUnNcCsSzZ\u0627\u3042") +
                 "".join(rng.sample(marks, rng.randint(1, 4))) for _ in range(400)]
    hangul = [unicodedata.normalize("NFD", chr(cp)) for cp in range(0xAC00, 0xD7A4, 37)]
    hangul += ["\u1100\u1161\u11a8\u11a8", "\u1100\u1100\u1161", "\uac00\u11a8", "\uac01\u11a8"]
    items = [("decomposable_as_is", decomposable),
             ("decomposable_nfd", [unicodedata.normalize("NFD", c) for c in decomposable]),
             ("scrambled_marks", scrambled), ("hangul", hangul)]
    out = []
    for name, strings in items:
        text = sep.join(strings)
        out.append(dict(name=name, input=text, nfc=nfc.normalize_str(text)))
    return out


def write_json(path: str, obj, indent=None) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent, sort_keys=indent is not None)
        f.write("\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/tokenizers")
    args = ap.parse_args()
    out = args.out
    if os.path.isdir(out):
        shutil.rmtree(out)
    for sub in ("bpe", "sp", "tiny_unk", "tiny_fallback"):
        os.makedirs(os.path.join(out, sub))

    bpe = train_bpe()
    bpe.save(os.path.join(out, "bpe", "tokenizer.json"))
    bpe = Tokenizer.from_file(os.path.join(out, "bpe", "tokenizer.json"))  # as the C++ reads it
    write_json(os.path.join(out, "bpe", "tokenizer_config.json"), {
        "add_prefix_space": False,
        "tokenizer_class": "GPTNeoXTokenizer",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": {"content": "<|padding|>", "lstrip": False, "normalized": False,
                      "rstrip": False, "single_word": False, "special": True},
    }, indent=2)
    tiny = {}
    for variant in ("tiny_unk", "tiny_fallback"):
        path = os.path.join(out, variant, "tokenizer.json")
        write_json(path, tiny_tokenizer_json(variant), indent=2)
        tiny[variant] = Tokenizer.from_file(path)
    sp_model = train_sentencepiece()
    with open(os.path.join(out, "sp", "tokenizer.model"), "wb") as f:
        f.write(sp_model)
    sp = spm.SentencePieceProcessor(model_proto=sp_model)

    nfc = normalizers.NFC()
    lines = []
    emulation_checked = 0
    for name, text in TEST_CASES:
        rec = dict(name=name, text=text, nfc=nfc.normalize_str(text))
        assert rec["nfc"] == unicodedata.normalize("NFC", text), name
        rec["pieces"] = [p for p, _ in bpe.pre_tokenizer.pre_tokenize_str(text)]
        rec["bpe"] = hf_result(bpe, text)
        # Where the library round-trips: not when lstrip/rstrip swallow spaces, nor when an added
    # token with NFD content decodes to that content.
        rec["bpe"]["round_trip"] = rec["bpe"]["decoded"] == rec["nfc"]
        for variant, tok in tiny.items():
            rec[variant] = hf_result(tok, text)
        rec["sp"] = sp_result(sp, text)
        if not has_added_text(text):
            assert emulate_bpe(bpe, text.encode()) == rec["bpe"]["ids"], name
            emulation_checked += 1
        lines.append(rec)
    no_round_trip = [r["name"] for r in lines if not r["bpe"]["round_trip"]]
    assert set(no_round_trip) <= {"im_start_strip", "im_start_newline", "rstrip_then_space_token",
                                  "rstrip_overlap_quirk", "lstrip_after_token",
                                  "normalized_added", "raw_added"}, no_round_trip
    for name, data in INVALID_UTF8:
        assert not has_added_text(data.decode("utf-8", "replace")), name
        ids = emulate_bpe(bpe, data)
        decoded = bpe.decode(ids, skip_special_tokens=False)
        assert decoded == data.decode("utf-8", "replace"), name
        lines.append(dict(name=name, hex=data.hex(), bpe=dict(ids=ids, decoded=decoded),
                          sp=sp_result(sp, data)))
    with open(os.path.join(out, "cases.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        for rec in lines:
            f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
    with open(os.path.join(out, "nfc.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        for rec in nfc_cases():
            f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
    write_json(os.path.join(out, "versions.json"), {
        "generator": GENERATOR,
        "python": platform.python_version(),
        "tokenizers": tokenizers.__version__,
        "sentencepiece": spm.__version__,
        "sentencepiece_note": "Python wrapper built from the sdist against Debian's "
                              "libsentencepiece 0.1.97, the library ssmtune links",
        "regex": regex.__version__,
        "unicodedata": unicodedata.unidata_version,
    }, indent=2)
    total = 0
    for root, _, files in os.walk(out):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    print("wrote %s: %d test strings, %d ill-formed UTF-8 cases, emulation checked on %d, "
          "%d bytes in all" % (out, len(TEST_CASES), len(INVALID_UTF8), emulation_checked, total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
