// GPT-2's byte-level pieces, as the tokenizers ByteLevel pre-tokenizer and decoder
// (tokenizers/src/pre_tokenizers/byte_level.rs) do them: the GPT-2 split pattern and the
// mapping of every byte to a printable character.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ssmtune::byte_level {

// UTF-8 of the character that stands for byte `b`: bytes 0x21-0x7E, 0xA1-0xAC and 0xAE-0xFF
// stand for themselves, the other 68 for U+0100, U+0101, ... in byte order (space -> U+0120).
const std::string& byte_char(std::uint8_t b);

// Appends the byte-level characters of every byte of `bytes` (invalid UTF-8 included).
void append_byte_chars(std::string_view bytes, std::string& out);

// Appends the bytes one token decodes to (the ByteLevel decoder, token by token): its
// characters' bytes when all of them are byte-level characters, else the token's own UTF-8
// (added tokens such as NeoX's raw-space tokens).
void append_token_bytes(std::string_view token, std::string& out);

// Splits `text` into the matches of GPT-2's pattern, in order, covering all of it:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// with Unicode letter/number/White_Space classes; ill-formed UTF-8 bytes are "other".
void split_gpt2(std::string_view text, std::vector<std::string_view>& pieces);

}  // namespace ssmtune::byte_level
