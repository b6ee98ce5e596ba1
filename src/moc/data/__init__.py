"""Data: text sources, tokenizers, prepared (memory-mapped) token files, packing and chat data.

from moc.data import prepare_pretraining_data, load_prepared, PackedSequences
out = prepare_pretraining_data(["corpus/"], "tok", "data/corpus")   # tokenize once (reused later)
train = PackedSequences(load_prepared(out, "train"), seq_len=1024)
batch = train[0]        # {"input_ids": LongTensor[1024], "targets": LongTensor[1024]}
"""

from moc.data.chat import encode_conversation, validate_messages
from moc.data.config import prepare_from_config
from moc.data.errors import DataError
from moc.data.packing import IGNORE_INDEX, ChatSequences, PackedSequences
from moc.data.prepare import prepare_chat_data, prepare_pretraining_data
from moc.data.prepared import TokenData, check_compatible, load_prepared, read_meta, token_dtype
from moc.data.sources import Source, iter_documents, resolve_sources
from moc.data.tokenizer import (
    DEFAULT_CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    chat_stop_token_ids,
    load_tokenizer,
    train_tokenizer,
)

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "IGNORE_INDEX",
    "SPECIAL_TOKENS",
    "ChatSequences",
    "DataError",
    "PackedSequences",
    "Source",
    "TokenData",
    "chat_stop_token_ids",
    "check_compatible",
    "encode_conversation",
    "iter_documents",
    "load_prepared",
    "load_tokenizer",
    "prepare_chat_data",
    "prepare_from_config",
    "prepare_pretraining_data",
    "read_meta",
    "resolve_sources",
    "token_dtype",
    "train_tokenizer",
    "validate_messages",
]
