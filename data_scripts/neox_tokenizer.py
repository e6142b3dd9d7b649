"""The GPT-NeoX-like byte-level BPE setup shared by the tokenizer fixtures and the shipped example:
NFC, ByteLevel(add_prefix_space=False) pre-tokenizer, post-processor and decoder, and the special
tokens <|endoftext|> = 0 (EOS) and <|padding|> = 1 (pad), as Mamba's GPT-NeoX tokenizer has them
(docs/models.md "Tokenizers")."""
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers


def neox_like_bpe(vocab_size: int):
    """An untrained tokenizer and the BpeTrainer for it: `tok.train_from_iterator(texts, trainer)`."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    return tok, trainer
