"""Tiny, randomly initialised classifiers of every supported family, built offline.

Each gets a real fast tokenizer trained on a small corpus, so export and serving
run the same code paths as for a real checkpoint, in a fraction of the time.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from export.texts import IN_DOMAIN, OUT_OF_DOMAIN

MAX_LENGTH = 24
CORPUS = [t for t in IN_DOMAIN + OUT_OF_DOMAIN if t] + ["hello world", "émoji 😀 ünïcödé 中文 テキスト"]
BERT_SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
ROBERTA_SPECIALS = {"pad": "<pad>", "unk": "<unk>", "cls": "<s>", "sep": "</s>", "mask": "<mask>"}

# family -> (config class name, model class name, tokenizer model, special tokens)
FAMILIES = {
    "bert": ("BertConfig", "BertForSequenceClassification", "wordpiece", BERT_SPECIALS),
    "distilbert": ("DistilBertConfig", "DistilBertForSequenceClassification", "wordpiece", BERT_SPECIALS),
    "electra": ("ElectraConfig", "ElectraForSequenceClassification", "wordpiece", BERT_SPECIALS),
    "mpnet": ("MPNetConfig", "MPNetForSequenceClassification", "wordpiece", ROBERTA_SPECIALS),
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification", "bpe", ROBERTA_SPECIALS),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaForSequenceClassification", "unigram", ROBERTA_SPECIALS),
    "deberta-v2": ("DebertaV2Config", "DebertaV2ForSequenceClassification", "unigram", BERT_SPECIALS),
    "albert": ("AlbertConfig", "AlbertForSequenceClassification", "unigram", BERT_SPECIALS),
    "modernbert": ("ModernBertConfig", "ModernBertForSequenceClassification", "bpe", BERT_SPECIALS),
}


def train_tokenizer(kind: str, specials: dict[str, str]) -> Tokenizer:
    ordered = [specials[k] for k in ("pad", "unk", "cls", "sep", "mask")]
    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=specials["unk"]))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=ordered)
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=specials["unk"]))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        trainer = trainers.BpeTrainer(
            vocab_size=500, special_tokens=ordered, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
    else:
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=ordered, unk_token=specials["unk"])
    tokenizer.train_from_iterator(CORPUS, trainer)
    cls, sep = specials["cls"], specials["sep"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
    )
    return tokenizer


def build(
    family: str,
    directory: Path,
    *,
    num_labels: int = 3,
    multi_label: bool = False,
    seed: int = 0,
    labels: list[str] | None = None,
    problem_type: str | None = None,
    **config_overrides: object,
) -> Path:
    """A tiny random checkpoint; ``labels`` names the classes, ``config_overrides`` go
    to the config (``type_vocab_size=0`` makes a DeBERTa-v3 style model)."""
    import torch
    import transformers
    from transformers import PreTrainedTokenizerFast

    config_name, model_name, kind, specials = FAMILIES[family]
    tokenizer = train_tokenizer(kind, specials)
    names = labels or [f"label_{i}" for i in range(num_labels)]
    if problem_type is None:
        problem_type = "multi_label_classification" if multi_label else "single_label_classification"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=MAX_LENGTH,
        **{f"{k}_token": v for k, v in specials.items()},
    )
    config = getattr(transformers, config_name)(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.token_to_id(specials["pad"]),
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
        problem_type=problem_type,
        # DistilBERT and ALBERT name their sizes differently; ModernBERT needs its special ids.
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        embedding_size=16,
        cls_token_id=tokenizer.token_to_id(specials["cls"]),
        sep_token_id=tokenizer.token_to_id(specials["sep"]),
        bos_token_id=tokenizer.token_to_id(specials["cls"]),
        eos_token_id=tokenizer.token_to_id(specials["sep"]),
        **config_overrides,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def build_sentence_body(directory: Path, *, normalize: bool = True) -> Path:
    """A tiny BERT body saved as a sentence-transformers model (mean pooling)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    checkpoint = directory / "hf"
    tokenizer = train_tokenizer("wordpiece", BERT_SPECIALS)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=512, **{f"{k}_token": v for k, v in BERT_SPECIALS.items()}
    ).save_pretrained(checkpoint)
    torch.manual_seed(1)
    BertModel(
        BertConfig(
            vocab_size=tokenizer.get_vocab_size(),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).save_pretrained(checkpoint)
    transformer = Transformer(str(checkpoint), max_seq_length=MAX_LENGTH)
    modules = [transformer, Pooling(32, pooling_mode="mean")] + ([Normalize()] if normalize else [])
    SentenceTransformer(modules=modules, device="cpu").save(str(directory / "st"))
    return directory / "st"


def train_head(path: Path, *, width: int, classes: list[str], seed: int = 0) -> Path:
    """A scikit-learn LogisticRegression on random unit vectors, saved with joblib."""
    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    features = rng.normal(size=(60, width))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = [classes[i % len(classes)] for i in range(60)]
    joblib.dump(LogisticRegression(max_iter=500).fit(features, labels), path)
    return path


# family -> (config class, model class, bos, eos, pad, extra config): decoder-LLM classifiers.
# Llama, Mistral and GPT-2 tokenizers ship without a pad token; Mistral gets a short
# sliding window so that texts longer than it exercise the windowed mask.
DECODERS = {
    "qwen2": ("Qwen2Config", "Qwen2ForSequenceClassification", None, "<|endoftext|>", "<|endoftext|>", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForSequenceClassification", None, "<|im_end|>", "<|endoftext|>", {"head_dim": 8}),
    "llama": ("LlamaConfig", "LlamaForSequenceClassification", "<s>", "</s>", None, {}),
    "mistral": ("MistralConfig", "MistralForSequenceClassification", "<s>", "</s>", None, {"sliding_window": 6}),
    "gemma": ("GemmaConfig", "GemmaForSequenceClassification", "<bos>", "<eos>", "<pad>", {"head_dim": 8}),
    "gpt2": (
        "GPT2Config",
        "GPT2ForSequenceClassification",
        None,
        "<|endoftext|>",
        None,
        {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64},
    ),
}


def build_decoder(
    family: str, directory: Path, *, num_labels: int = 3, seed: int = 0, **config_overrides: object
) -> Path:
    """``config_overrides`` change the sizes (``hidden_size``, ``num_hidden_layers``, ...)."""
    import torch
    import transformers
    from transformers import PreTrainedTokenizerFast

    config_name, model_name, bos, eos, pad, extra = DECODERS[family]
    specials = [t for t in dict.fromkeys([pad, bos, eos, "<|im_end|>"]) if t]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = __import__("tokenizers").decoders.ByteLevel()
    tokenizer.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    if bos:  # Llama-style tokenizers put BOS in front of every text.
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=MAX_LENGTH,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        model_input_names=["input_ids", "attention_mask"],  # as every decoder tokenizer declares
    )
    ids = {
        name: tokenizer.token_to_id(token) if token else None
        for name, token in (("bos", bos), ("eos", eos), ("pad", pad))
    }
    sizes = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        **extra,
        **config_overrides,
    }
    config = getattr(transformers, config_name)(
        vocab_size=tokenizer.get_vocab_size(),
        bos_token_id=ids["bos"] if ids["bos"] is not None else ids["eos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        num_labels=num_labels,
        id2label={i: f"label_{i}" for i in range(num_labels)},
        label2id={f"label_{i}": i for i in range(num_labels)},
        **sizes,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    # Random heads give near-identical logits for every text; spread them as a trained head would.
    with torch.no_grad():
        model.score.weight.mul_(20.0)
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


# Keyword groups that label the built-in texts for ``fine_tune``: money, plans, anything else.
_TOPICS = (
    ("card", "credit", "account", "balance", "bank", "money", "pay", "transfer", "savings", "dollars"),
    ("flight", "hotel", "trip", "travel", "book", "weather", "alarm", "timer", "music", "play", "remind"),
)


def topic(text: str) -> int:
    words = text.lower()
    return next((index for index, group in enumerate(_TOPICS) if any(word in words for word in group)), 2)


def fine_tune(directory: Path, *, epochs: int = 3, seed: int = 0) -> Path:
    """Train a decoder checkpoint from ``build_decoder`` (3 labels) briefly on the built-in texts,
    labelled by ``topic``, and save it in place: random weights give nearly flat logits on which
    any quantization flips top-1 labels, a trained model has real margins (seconds on a tiny one)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    # Right-padded batches: the head reads the last token that is not padding. Without a pad token
    # transformers refuses batches, so such a model trains one text at a time.
    size = 16 if tokenizer.pad_token is not None else 1
    texts = sorted((t for t in IN_DOMAIN + OUT_OF_DOMAIN if t.strip()), key=len)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for start in range(0, len(texts), size):
            chunk = texts[start : start + size]
            features = tokenizer(chunk, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
            optimizer.zero_grad()
            model(**features, labels=torch.tensor([topic(text) for text in chunk])).loss.backward()
            optimizer.step()
    model.eval().save_pretrained(directory)
    return directory
