"""ACE-Step v1 lyric tokenizer: language detection, per-language normalisation, BPE.

Gives the same ids as upstream's ``ACEStepPipeline.tokenize_lyrics`` for the same vocabulary:

- ``LyricTokenizer.from_vocab_file(resolve_vocab(checkpoint_dir))`` for a checkpoint;
- ``write_tiny_vocab(checkpoint_dir)`` for tiny test checkpoints (written where
  ``resolve_vocab`` looks first, ``<checkpoint>/lyric_tokenizer/vocab.json``).

Importing this package is cheap: the language identifier, pinyin, romanisers and num2words
load on first use.
"""

from .language import TooManyIdentifications
from .tokenizer import SUPPORTED_LANGUAGES, LyricTokenizer
from .vocab import CHECKPOINT_VOCAB, VocabularyUnavailableError, resolve_vocab, write_tiny_vocab

__all__ = [
    "CHECKPOINT_VOCAB",
    "SUPPORTED_LANGUAGES",
    "LyricTokenizer",
    "TooManyIdentifications",
    "VocabularyUnavailableError",
    "resolve_vocab",
    "write_tiny_vocab",
]
