"""Write the skeleton model folders in this directory (config, tokenizer files, no weights).

small-en and base-en are the published non-weight files. The files of base-code, base-de, base-es
and base-zh are written here from what their public descriptions state (docs/models.md): the
config fields that shape the model and select the layer, and a tokenizer of the published kind
(byte-level BPE in RoBERTa's format for code/de/es; BPE over whitespace-split, lowercased text
for zh) trained on a small corpus, because the real tokenizer files are not available here.
Their vocabularies are therefore much smaller than ``vocab_size``; ids stay in range.

Run ``python tests/models/generate.py`` from the repository root to regenerate them.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer

HERE = Path(__file__).parent
REMOTE = {"implementation": "jinaai/jina-bert-implementation",
          "qk-post-norm": "jinaai/jina-bert-v2-qk-post-norm"}  # fmt: skip
SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
CORPUS = [
    "The lighthouse keeper logged the storm at midnight and the ship reached the harbour.",
    "Retrieval-augmented generation finds passages in long documents and cites them.",
    "Der Leuchtturmwärter notierte den Sturm um Mitternacht, und das Schiff erreichte den Hafen.",
    "Die Suche findet Abschnitte in langen Dokumenten und zitiert sie mit ihrer Quelle.",
    "El farero anotó la tormenta a medianoche y el barco llegó al puerto.",
    "La búsqueda encuentra pasajes en documentos largos y los cita con su fuente.",
    "灯塔看守人在午夜记录了风暴 船只抵达了港口",
    "检索增强生成在长文档中查找段落并引用它们",
    "def search(query: str, k: int = 5) -> list[str]:\n    return index.top(query, k)\n",
    "for (int i = 0; i < n; ++i) { total += values[i]; }",
    "SELECT title, score FROM documents WHERE tenant = 'a' ORDER BY score DESC LIMIT 5;",
]


def config(layout: str, **overrides) -> dict:
    """A jina-embeddings-v2 base config.json naming the remote code of ``layout``."""
    repo = REMOTE[layout]
    classifier = "modeling_bert.JinaBertForSequenceClassification"
    return {
        "_name_or_path": repo,
        "architectures": ["JinaBertForMaskedLM"],
        "attention_probs_dropout_prob": 0.0,
        "auto_map": {
            "AutoConfig": f"{repo}--configuration_bert.JinaBertConfig",
            "AutoModel": f"{repo}--modeling_bert.JinaBertModel",
            "AutoModelForMaskedLM": f"{repo}--modeling_bert.JinaBertForMaskedLM",
            "AutoModelForSequenceClassification": f"{repo}--{classifier}",
        },
        "emb_pooler": "mean",
        "feed_forward_type": "geglu",
        "hidden_act": "gelu",
        "hidden_size": 768,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 8192,
        "model_max_length": 8192,
        "model_type": "bert",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "pad_token_id": 1,
        "position_embedding_type": "alibi",
        "type_vocab_size": 2,
        "vocab_size": 61056,
        **overrides,
    }


def bpe_tokenizer(byte_level: bool) -> Tokenizer:
    """A RoBERTa-format BPE tokenizer: <s> text </s>, <pad> = 1."""
    if byte_level:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.normalizer = normalizers.Lowercase()
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        alphabet = []
    trainer = BpeTrainer(vocab_size=800, special_tokens=SPECIAL, initial_alphabet=alphabet,
                         show_progress=False)  # fmt: skip
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>")),
        trim_offsets=True, add_prefix_space=False,
    )  # fmt: skip
    return tokenizer


def write(name: str, config_json: dict, tokenizer: Tokenizer, tokenizer_class: str) -> None:
    folder = HERE / name
    (folder / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_json, indent=2) + "\n")
    tokenizer.save(str(folder / "tokenizer.json"))
    roles = ["bos_token", "pad_token", "eos_token", "unk_token", "mask_token"]
    names = dict(zip(roles, SPECIAL, strict=True))
    names |= {"cls_token": "<s>", "sep_token": "</s>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(names, indent=2) + "\n")
    settings = {"tokenizer_class": tokenizer_class, "model_max_length": 8192, **names}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 8192, "do_lower_case": False}) + "\n"
    )
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
    pooling = {"word_embedding_dimension": config_json["hidden_size"]}
    pooling |= {f"pooling_mode_{mode}": mode == "mean_tokens" for mode in modes}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")


def main() -> None:
    byte_level = bpe_tokenizer(byte_level=True)
    write("jina-embeddings-v2-base-code", config("qk-post-norm"), byte_level,
          "RobertaTokenizer")  # fmt: skip
    for language in ("de", "es"):
        write(f"jina-embeddings-v2-base-{language}", config("implementation"),
              byte_level, "RobertaTokenizer")  # fmt: skip
    write("jina-embeddings-v2-base-zh", config("implementation"),
          bpe_tokenizer(byte_level=False), "XLMRobertaTokenizer")  # fmt: skip


if __name__ == "__main__":
    main()
