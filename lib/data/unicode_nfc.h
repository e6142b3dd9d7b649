// Unicode Normalization Form C (UAX #15) of UTF-8 text: the NFC normalizer of tokenizer.json
// files (tokenizers' normalizers::NFC), the first step of the GPT-NeoX tokenizer.
#pragma once

#include <string>
#include <string_view>

namespace ssmtune {

// NFC of `text`. Bytes of ill-formed UTF-8 pass through unchanged (each acts as a starter
// that composes with nothing). Text without characters that NFC can change (plain ASCII,
// most precomposed text, CJK) is returned as is after one scan.
std::string nfc(std::string_view text);

}  // namespace ssmtune
