#!/usr/bin/env python3
"""Generate lib/data/unicode_tables.{h,cpp}: the Unicode data the byte-level BPE tokenizer needs.

Tables (all from Python's `unicodedata`, whose Unicode version is written into the files):
  * character classes, as sorted ranges of code points with equal flags:
      Letter      general category L*           (GPT-2 pattern \\p{L}, Oniguruma)
      Number      general category N*           (GPT-2 pattern \\p{N})
      WhiteSpace  U+0009..U+000D, U+0085, Zs, Zl, Zp  (= the White_Space property; Oniguruma's
                  Unicode \\s and Rust regex's \\s, used by the GPT-2 pattern and by the
                  lstrip/rstrip of added tokens)
      Word        Rust regex \\w (UTS #18 Annex C): Alphabetic, M*, Nd, Pc, Join_Control; for
                  the single_word flag of added tokens. `unicodedata` has no Alphabetic
                  property, so that one comes from the `regex` module's \\p{Alphabetic},
                  restricted to code points assigned in unicodedata's version.
      NfcUnsafe   characters that can change or merge under NFC: combining class != 0,
                  NFC(c) != c, or the second element of a canonical composition (NFC_QC
                  No/Maybe, plus non-starters). Text without them is already NFC.
  * canonical combining classes != 0, as ranges;
  * full canonical decompositions (NFD of one character), except Hangul syllables, which the
    C++ code decomposes and composes algorithmically (Unicode 3.12);
  * primary composites: (first, second) -> composite for every two-element canonical
    decomposition whose composite is NFC-stable (so composition exclusions and singletons
    are left out).
The characters in NO_DECOMPOSITION are treated as having no decomposition, as the tokenizers
library's older normalization data does.

With --check-tokenizers the script also compares the classes and NFC against the Hugging Face
`tokenizers` library (the GPT-2 ByteLevel pre-tokenizer and the NFC normalizer) on every code
point and reports differences (exit 1 on an unexpected one).

Usage (from the repository root):
    /tmp/fxenv/bin/python data_scripts/make_unicode_tables.py --out lib/data [--check-tokenizers]
"""

from __future__ import annotations

import argparse
import os
import sys
import unicodedata

import regex

MAX_CP = 0x110000
LETTER, NUMBER, WHITE_SPACE, WORD, NFC_UNSAFE = 1, 2, 4, 8, 16
HANGUL_S_BASE, HANGUL_S_COUNT = 0xAC00, 11172
HANGUL_V = range(0x1161, 0x1176)
HANGUL_T = range(0x11A8, 0x11C3)
# Characters whose canonical decomposition is newer than the data of the tokenizers library's
# NFC (the unicode-normalization-alignments crate): it leaves them and their parts alone, so
# the tables treat them as having no decomposition, to normalize exactly as tokenizers does.
# U+11938 DIVES AKURU VOWEL SIGN O = U+11935 U+11930 (Unicode 13.0).
NO_DECOMPOSITION = {0x11938}


def category(cp: int) -> str:
    return unicodedata.category(chr(cp))


def composition_pairs() -> list[tuple[int, int, int]]:
    pairs = []
    for cp in range(MAX_CP):
        d = unicodedata.decomposition(chr(cp))
        if not d or d.startswith("<") or cp in NO_DECOMPOSITION:
            continue
        parts = [int(x, 16) for x in d.split()]
        if len(parts) != 2 or unicodedata.normalize("NFC", chr(cp)) != chr(cp):
            continue
        # A primary composite: NFC puts it back together from its two parts.
        assert unicodedata.normalize("NFC", chr(parts[0]) + chr(parts[1])) == chr(cp), hex(cp)
        pairs.append((parts[0], parts[1], cp))
    return sorted(pairs)


def class_flags(pairs) -> list[int]:
    alphabetic = regex.compile(r"\p{Alphabetic}")
    seconds = {b for _, b, _ in pairs} | set(HANGUL_V) | set(HANGUL_T)
    flags = [0] * MAX_CP
    for cp in range(MAX_CP):
        c = chr(cp)
        cat = category(cp)
        if cat == "Cn":
            continue
        f = 0
        if cat[0] == "L":
            f |= LETTER
        if cat[0] == "N":
            f |= NUMBER
        if cat in ("Zs", "Zl", "Zp") or 0x9 <= cp <= 0xD or cp == 0x85:
            f |= WHITE_SPACE
        if (alphabetic.match(c) or cat[0] == "M" or cat in ("Nd", "Pc")
                or cp in (0x200C, 0x200D)):
            f |= WORD
        if (unicodedata.combining(c) != 0 or cp in seconds
                or (cat not in ("Cs",) and cp not in NO_DECOMPOSITION
                    and unicodedata.normalize("NFC", c) != c)):
            f |= NFC_UNSAFE
        flags[cp] = f
    return flags


def ranges(values: list[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of equal non-zero values: (first, last, value)."""
    out = []
    cp = 0
    while cp < len(values):
        v = values[cp]
        end = cp
        while end + 1 < len(values) and values[end + 1] == v:
            end += 1
        if v:
            out.append((cp, end, v))
        cp = end + 1
    return out


def decompositions() -> tuple[list[tuple[int, int, int]], list[int]]:
    entries, pool = [], []
    for cp in range(MAX_CP):
        if (HANGUL_S_BASE <= cp < HANGUL_S_BASE + HANGUL_S_COUNT or category(cp) in ("Cn", "Cs")
                or cp in NO_DECOMPOSITION):
            continue
        d = unicodedata.normalize("NFD", chr(cp))
        if d != chr(cp):
            entries.append((cp, len(pool), len(d)))
            pool.extend(ord(x) for x in d)
    assert len(pool) < 1 << 16 and max(n for _, _, n in entries) < 256
    return entries, pool


def rows(items, per_line: int) -> str:
    lines = []
    for i in range(0, len(items), per_line):
        lines.append("    " + " ".join(items[i:i + per_line]))
    return "\n".join(lines)


def write_files(out_dir: str, pairs, flags) -> None:
    class_ranges = ranges(flags)
    ccc_ranges = ranges([unicodedata.combining(chr(cp)) for cp in range(MAX_CP)])
    decomp, pool = decompositions()
    version = unicodedata.unidata_version
    py = "%d.%d.%d" % sys.version_info[:3]
    banner = (
        "// Generated by data_scripts/make_unicode_tables.py from Python %s unicodedata\n"
        "// (Unicode %s); do not edit. See the script for what each table holds.\n" % (py, version))

    header = banner + """#pragma once

#include <cstdint>
#include <span>

namespace ssmtune::unicode_tables {

inline constexpr const char* kUnicodeVersion = "%s";

// Bits of CodePointRange::value in kClassRanges.
inline constexpr std::uint8_t kLetter = 1;      // L*
inline constexpr std::uint8_t kNumber = 2;      // N*
inline constexpr std::uint8_t kWhiteSpace = 4;  // White_Space
inline constexpr std::uint8_t kWord = 8;        // Rust regex \\w
inline constexpr std::uint8_t kNfcUnsafe = 16;  // may change or merge under NFC

// Code points first..last (inclusive) share `value`; sorted, disjoint, value != 0.
struct CodePointRange {
  char32_t first;
  char32_t last;
  std::uint8_t value;
};

// Full canonical decomposition of code_point: kDecompositionPool[offset, offset + length).
struct Decomposition {
  char32_t code_point;
  std::uint16_t offset;
  std::uint8_t length;
};

// first + second compose to composite (primary composites only); sorted by (first, second).
struct Composition {
  char32_t first;
  char32_t second;
  char32_t composite;
};

extern const std::span<const CodePointRange> kClassRanges;
extern const std::span<const CodePointRange> kCombiningClassRanges;  // value = ccc
extern const std::span<const Decomposition> kDecompositions;         // sorted by code_point
extern const std::span<const char32_t> kDecompositionPool;
extern const std::span<const Composition> kCompositions;

}  // namespace ssmtune::unicode_tables
""" % version

    def range_items(rs):
        return ["{0x%X, 0x%X, %d}," % r for r in rs]

    body = banner + """#include "data/unicode_tables.h"

namespace ssmtune::unicode_tables {

namespace {

// clang-format off
constexpr CodePointRange kClassRangesData[] = {
%s
};

constexpr CodePointRange kCombiningClassRangesData[] = {
%s
};

constexpr Decomposition kDecompositionsData[] = {
%s
};

constexpr char32_t kDecompositionPoolData[] = {
%s
};

constexpr Composition kCompositionsData[] = {
%s
};
// clang-format on

}  // namespace

const std::span<const CodePointRange> kClassRanges(kClassRangesData);
const std::span<const CodePointRange> kCombiningClassRanges(kCombiningClassRangesData);
const std::span<const Decomposition> kDecompositions(kDecompositionsData);
const std::span<const char32_t> kDecompositionPool(kDecompositionPoolData);
const std::span<const Composition> kCompositions(kCompositionsData);

}  // namespace ssmtune::unicode_tables
""" % (
        rows(range_items(class_ranges), 4),
        rows(range_items(ccc_ranges), 4),
        rows(["{0x%X, %d, %d}," % e for e in decomp], 5),
        rows(["0x%X," % c for c in pool], 10),
        rows(["{0x%X, 0x%X, 0x%X}," % p for p in pairs], 4),
    )
    for name, text in (("unicode_tables.h", header), ("unicode_tables.cpp", body)):
        path = os.path.join(out_dir, name)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        print("wrote %s (%d bytes)" % (path, len(text.encode())))
    print("Unicode %s: %d class ranges, %d ccc ranges, %d decompositions (%d code points), "
          "%d compositions" % (version, len(class_ranges), len(ccc_ranges), len(decomp),
                               len(pool), len(pairs)))


def piece_starts(pre_tokenizer, text: str) -> set[int]:
    """Character offsets where the GPT-2 pattern starts a piece."""
    return {start for _, (start, _) in pre_tokenizer.pre_tokenize_str(text)}


def check_tokenizers(pairs, flags) -> int:
    """Compares the tables with what the tokenizers library does, code point by code point."""
    import tokenizers
    from tokenizers import normalizers, pre_tokenizers

    pt = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    cps = [cp for cp in range(MAX_CP) if not 0xD800 <= cp <= 0xDFFF and cp != 0x20]
    failures = 0

    def isolated_between(glue: str) -> list[bool]:
        # glue c1 glue c2 glue ...: is each c_i a piece of its own (starts a piece and the glue
        # after it starts one)?
        text = glue + glue.join(chr(cp) for cp in cps) + glue
        starts = piece_starts(pt, text)
        return [(2 * i + 1) in starts and (2 * i + 2) in starts for i in range(len(cps))]

    # A letter joins "a", a number joins "1"; a letter, number or white space is cut off from
    # U+0001 (a control character, matched by [^\s\p{L}\p{N}]+ like all "other" characters).
    joins_letter = [not x for x in isolated_between("a")]
    joins_number = [not x for x in isolated_between("1")]
    apart_from_other = isolated_between("\x01")
    for i, cp in enumerate(cps):
        f = flags[cp]
        want_letter, want_number = bool(f & LETTER), bool(f & NUMBER)
        want_space = bool(f & WHITE_SPACE)
        got_space = apart_from_other[i] and not joins_letter[i] and not joins_number[i]
        if (joins_letter[i], joins_number[i], got_space) != (want_letter, want_number, want_space):
            failures += 1
            if failures <= 20:
                print("class mismatch U+%04X %s: tokenizers L=%d N=%d WS=%d, tables L=%d N=%d WS=%d"
                      % (cp, category(cp), joins_letter[i], joins_number[i], got_space,
                         want_letter, want_number, want_space))

    nfc = normalizers.NFC()
    sep = "\x01"  # a starter that composes with nothing: each item is normalized on its own
    cps = [cp for cp in cps if cp != ord(sep)]
    for label, items in (
            ("NFC(c)", [chr(cp) for cp in cps]),
            ("NFC(NFD(c))", [unicodedata.normalize("NFD", chr(cp)) for cp in cps]),
            ("NFC(a + b)", [chr(a) + chr(b) for a, b, _ in pairs])):
        got = nfc.normalize_str(sep.join(items)).split(sep)
        want = unicodedata.normalize("NFC", sep.join(items)).split(sep)
        assert len(got) == len(want) == len(items)
        for item, g, w in zip(items, got, want):
            if g != w:
                known = any(ord(x) in NO_DECOMPOSITION for x in g + w)
                print("%s %s mismatch for %s: tokenizers %s, unicodedata %s" % (
                    "known (NO_DECOMPOSITION)" if known else "UNEXPECTED", label,
                    [hex(ord(x)) for x in item], [hex(ord(x)) for x in g],
                    [hex(ord(x)) for x in w]))
                failures += 0 if known else 1
    print("checked %d code points against tokenizers %s: %d unexpected differences"
          % (len(cps), tokenizers.__version__, failures))
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="lib/data", help="directory for unicode_tables.{h,cpp}")
    ap.add_argument("--check-tokenizers", action="store_true",
                    help="also compare with the tokenizers library (needs it installed)")
    args = ap.parse_args()
    pairs = composition_pairs()
    flags = class_flags(pairs)
    write_files(args.out, pairs, flags)
    return check_tokenizers(pairs, flags) if args.check_tokenizers else 0


if __name__ == "__main__":
    sys.exit(main())
