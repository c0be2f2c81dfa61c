"""demo-text: a small GPT-2 trained on the docstrings of the Python standard library.

The corpus is read from this interpreter's standard-library sources with `ast`, in
sorted file order, so it needs no download and is the same on every machine with
the same Python version. Every 20th docstring is held out to measure perplexity.
"""
from __future__ import annotations

import ast
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from worker.demo import Progress, TrainingClock, cosine_lr, seed_everything
from worker.demo.quality import perplexity

EOS = "<|endoftext|>"
PAD = "<|pad|>"
HELDOUT_EVERY = 20  # every 20th docstring (5 %) is held out for evaluation
MIN_DOCSTRING_CHARS = 40  # shorter ones are mostly "Return self==value." boilerplate
# Tests, third-party packages, and code tables or data with little prose.
_SKIPPED_DIRS = {
    "site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings", "pydoc_data",
}


@dataclass(frozen=True)
class TextRecipe:
    max_corpus_chars: int | None
    vocab_size: int
    n_layer: int
    n_embd: int
    n_head: int
    block: int  # training sequence length, also the model's positions
    batch: int
    peak_lr: float
    max_steps: int
    budget_s: float
    eval_blocks: int  # held-out blocks scored for perplexity


# Chosen by trials on a shared 2-core machine: at this budget, 2 layers of width 128
# and batches of 4 x 256 tokens beat wider, deeper, larger-batch and 2,048-token-
# vocabulary variants on held-out bits per character.
FULL = TextRecipe(
    max_corpus_chars=None, vocab_size=4096, n_layer=2, n_embd=128, n_head=4, block=256, batch=4,
    peak_lr=2e-3, max_steps=1000, budget_s=85.0, eval_blocks=64,
)
QUICK = TextRecipe(
    max_corpus_chars=150_000, vocab_size=512, n_layer=2, n_embd=32, n_head=2, block=64, batch=8,
    peak_lr=3e-3, max_steps=20, budget_s=3.0, eval_blocks=8,
)


def build_text_model(out_dir: Path, *, quick: bool = False, progress: Progress = print) -> dict[str, Any]:
    """Train demo-text and save it (model + tokenizer) in `out_dir`; returns quality figures."""
    recipe = QUICK if quick else FULL
    seed_everything(0)
    progress("demo-text: reading standard-library docstrings")
    documents = collect_docstrings(recipe.max_corpus_chars)
    train_docs, heldout_docs = split_heldout(documents)
    tokenizer = train_tokenizer(train_docs, recipe.vocab_size, recipe.block)
    train_ids = encode_stream(tokenizer, train_docs)
    heldout_ids = encode_stream(tokenizer, heldout_docs)
    progress(
        f"demo-text: {len(documents)} docstrings, {sum(map(len, documents)) / 1e6:.1f} M characters, "
        f"{len(train_ids)} training tokens (vocabulary {len(tokenizer)})"
    )
    model = make_model(tokenizer, recipe)
    untrained = perplexity(model, heldout_ids, recipe.block, recipe.eval_blocks)
    clock = TrainingClock("demo-text", recipe.max_steps, recipe.budget_s, progress)
    steps = train(model, train_ids, recipe, clock)
    train_seconds = clock.elapsed()
    trained = perplexity(model, heldout_ids, recipe.block, recipe.eval_blocks)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    progress(f"demo-text: held-out perplexity {trained:.1f} (untrained {untrained:.1f}) after {steps} steps")
    return {
        "heldout_perplexity": round(trained, 2),
        "untrained_perplexity": round(untrained, 2),
        "heldout_tokens": min(len(heldout_ids), recipe.eval_blocks * recipe.block),
        "training_tokens": len(train_ids),
        "steps": steps,
        "train_seconds": round(train_seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
    }


def collect_docstrings(max_chars: int | None = None) -> list[str]:
    """Module, class and function docstrings of the standard library, deduplicated.

    Files are read in sorted order and each file's tree in `ast.walk` order, so the
    list is deterministic; tests and third-party packages are skipped.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    documents: dict[str, None] = {}
    total = 0
    for path in sorted(root.rglob("*.py")):
        if _SKIPPED_DIRS & set(path.relative_to(root).parts[:-1]):
            continue
        for doc in _docstrings(path):
            if len(doc) >= MIN_DOCSTRING_CHARS and doc not in documents:
                documents[doc] = None
                total += len(doc)
        if max_chars is not None and total >= max_chars:
            break
    return list(documents)


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []  # a few files are deliberately broken or not UTF-8
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docs = (ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds))
    return [prose(doc) for doc in docs if doc]


def prose(docstring: str) -> str:
    """The prose of a docstring: doctest and indented code paragraphs dropped, the
    others unwrapped onto one line.

    A small model given 90 seconds learns sentences far sooner than it learns
    where a 72-column wrap falls or what a `>>>` example prints.
    """
    kept = []
    for paragraph in re.split(r"\n[ \t]*\n", docstring.strip()):
        lines = [line for line in paragraph.splitlines() if line.strip()]
        if not lines or any(line.lstrip().startswith(">>>") for line in lines):
            continue
        indented = [line[0] in " \t" for line in lines]
        if all(indented):
            continue  # a code or table block
        kept.append(paragraph.strip() if any(indented) else " ".join(line.strip() for line in lines))
    return "\n\n".join(kept)


def split_heldout(documents: list[str]) -> tuple[list[str], list[str]]:
    """(training, held-out): every `HELDOUT_EVERY`-th document is held out."""
    heldout = [doc for i, doc in enumerate(documents) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    train = [doc for i, doc in enumerate(documents) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    return train, heldout


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int):
    """A byte-level BPE trained on `texts` (deterministic), wrapped for `AutoTokenizer`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=PAD,
        model_max_length=max_length,
    )


def encode_stream(tokenizer, documents: list[str]) -> torch.Tensor:
    """All documents as one token stream, each followed by the end-of-text token."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for row in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        ids.extend(row)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def make_model(tokenizer, recipe: TextRecipe):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=recipe.block,
        n_embd=recipe.n_embd,
        n_layer=recipe.n_layer,
        n_head=recipe.n_head,
        resid_pdrop=0.0,  # dropout only slows down a model that sees its data twice at most
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def train(model, stream: torch.Tensor, recipe: TextRecipe, clock: TrainingClock) -> int:
    """AdamW on random windows of the stream until the clock says stop; returns the step count."""
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.peak_lr, weight_decay=0.01)
    window = torch.arange(recipe.block)

    def train_step(step: int) -> torch.Tensor:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(recipe.peak_lr, clock.fraction(step), step, warmup_steps=30)
        starts = torch.randint(0, len(stream) - recipe.block, (recipe.batch, 1), generator=generator)
        batch = stream[starts + window]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    model.train()
    steps = clock.run(train_step)
    model.eval()
    return steps
