"""What a reranking stage costs per query, as a ratio to the search alone.

It ingests ``--documents`` documents of about 2,000 tokens each into Milvus Lite (late chunks,
MiniLM, the real pretrained encoder), then times ``--queries`` queries three ways on the same
store: the search alone (k=5), and with a cross-encoder re-scoring the top N = 20 and N = 50
documents on their best passage with context (``rerank_depth``). The cross-encoders have
random weights in the published layouts (cost does not depend on the weights): the ms-marco
MiniLM-L-6 cross-encoder (BERT, 6 layers, 384 wide) and jina-reranker-v1-turbo-en (JinaBERT,
ALiBi, 6 layers, 384 wide, 12 heads).

    python benchmarks/bench_rerank.py                      # 60 documents, 5 queries
    python benchmarks/bench_rerank.py --documents 100 --queries 10
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from jrag.checkpoints import bert_config, jina_v2_config, write_random_checkpoint
from jrag.embedding import identity_of, load_encoder
from jrag.pipeline import IngestOptions, ingest
from jrag.rerank import Reranker
from jrag.retrieval import search
from jrag.store import MilvusStore

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
ONE_LABEL = {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
SMALL = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
         "intermediate_size": 1536}  # fmt: skip
CROSS_ENCODERS = {
    "ms-marco-MiniLM-L-6 layout (BERT)": bert_config(
        architectures=["BertForSequenceClassification"], **SMALL, **ONE_LABEL
    ),
    "jina-reranker-v1-turbo-en layout (JinaBERT)": jina_v2_config(
        architectures=["JinaBertForSequenceClassification"], **SMALL, **ONE_LABEL
    ),
}
TOPICS = ["lighthouse", "granary", "railway", "observatory", "harbour", "orchard", "foundry",
          "archive", "bakery", "weir", "chapel", "quarry"]  # fmt: skip
VERBS = ["repaired", "inspected", "logged", "rebuilt", "painted", "measured", "closed", "opened"]
WORDS = ["copper", "oak", "lantern", "ledger", "storm", "winter", "barley", "signal", "lens",
         "stone", "river", "engine", "bell", "gate", "roof", "valve"]  # fmt: skip


def document(index: int, rng: random.Random) -> str:
    """About 2,000 MiniLM tokens of varied sentences about one topic."""
    topic = TOPICS[index % len(TOPICS)]
    sentences = []
    for _ in range(150):
        a, b = rng.sample(WORDS, 2)
        sentences.append(
            f"The {a} {rng.choice(VERBS)} at the {topic} in {rng.randint(1850, 1990)} "
            f"matched the {b} records."
        )
    return f"Notes {index} on the {topic}.\n\n" + " ".join(sentences)


def median_ms(run, queries: list[str], warm_up: bool = False) -> float:
    if warm_up:
        run(queries[0])
    times = []
    for query in queries:
        started = time.perf_counter()
        run(query)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=60)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 50])
    args = parser.parse_args()
    rng = random.Random(0)
    queries = [f"when was the {rng.choice(WORDS)} {rng.choice(VERBS)} at the {t}"
               for t in rng.sample(TOPICS, args.queries)]  # fmt: skip
    encoder = load_encoder(MINILM, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "docs"
        folder.mkdir()
        for index in range(args.documents):
            (folder / f"doc-{index:03}.txt").write_text(document(index, rng), encoding="utf-8")
        tokens = encoder.count_tokens([(folder / "doc-000.txt").read_text()])[0]
        store = MilvusStore(str(Path(tmp) / "lite.db"), "bench", identity=identity_of(encoder))
        started = time.perf_counter()
        ingest([folder], store, encoder, options=IngestOptions(mode="late"))
        print(f"{args.documents} documents of ~{tokens} tokens ingested in "
              f"{time.perf_counter() - started:.0f} s; {len(queries)} queries, k=5")  # fmt: skip
        alone = median_ms(lambda q: search(q, store, encoder, k=5), queries, warm_up=True)
        print(f"{'search alone':48} {alone:9.0f} ms/query   1.0x")
        for name, config in CROSS_ENCODERS.items():
            path = write_random_checkpoint(Path(tmp) / name.split()[0], config, classifier=True)
            reranker = Reranker.from_pretrained(path, device="cpu")
            reranker.score(queries[0], ["warm-up"])
            for depth in args.depths:
                options = {"k": 5, "rerank": reranker, "rerank_depth": depth}
                ms = median_ms(lambda q, o=options: search(q, store, encoder, **o), queries)
                print(f"{name + f', N={depth}':48} {ms:9.0f} ms/query {ms / alone:6.1f}x")
        store.close()


if __name__ == "__main__":
    main()
