"""Conversations, for chat fine-tuning and chat: the template and its special tokens (``template``),
JSONL conversation files (``jsonl``), ``plays-dialogue`` made from the plays (``dialogue``), packing
into windows with the loss on the replies (``packing``), and a fine-tuning run's data, both splits
templated and packed (``finetuning``)."""
