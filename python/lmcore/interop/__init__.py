"""Other frameworks' formats: transformers' GPT-2 names and layouts (``hf_format``), GPT-NeoX for
``--rope`` models (``hf_neox``), tokenizers as ``tokenizer.json`` and back (``hf_tokenizer``),
llama.cpp's GGUF (``gguf_format``), and a transformers GPT-2 directory as the start of a run
(``hf_import``). The ``python -m lmcore.export`` command writes through them."""
