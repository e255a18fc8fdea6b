"""chatloom: post-train language models on conversations.

The public API: the one data type (`Conversation`), tokenizers (`load_tokenizer`) and protocols
(`protocols.get(name, tokenizer=...)`, `protocols.from_template(...)`) that turn conversations into exact token ids and
loss masks and back.
"""

from . import protocols
from .conversation import Conversation, Message, Rejects, ValidationError, load, save
from .tokenizers import load_tokenizer, train_bpe

__version__ = "0.1.0"
__all__ = ["Conversation", "Message", "ValidationError", "Rejects", "load", "save", "load_tokenizer", "train_bpe",
           "protocols", "__version__"]
