"""Train normprobe's built-in `demo` model: a small GPT-2 on text every Python ships.

Deterministic for a given machine and thread count: fixed seeds, fixed data order, one thread.
Usage: python scripts/train_demo.py [--out normprobe/demo] [--steps 1200] [--save-every 0]
With --save-every K, intermediate checkpoints go to OUT/../demo-checkpoints/step-K/ (or --checkpoint-dir).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from normprobe.corpus import pydoc_topic_documents, stdlib_docstring_documents

EOS = "<|endoftext|>"


def split_corpus() -> tuple[list[str], list[str]]:
    topics = pydoc_topic_documents()
    held_out = set(range(3, len(topics), 7))  # the same paragraphs normprobe's sample uses
    train = [d for i, d in enumerate(topics) if i not in held_out] + stdlib_docstring_documents()
    valid = [topics[i] for i in sorted(held_out)]
    return train, valid


def train_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS)


def token_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    ids: list[int] = []
    for doc in docs:
        ids.append(tokenizer.eos_token_id)
        ids.extend(tokenizer(doc)["input_ids"])
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def evaluate(model, stream: torch.Tensor, ctx: int) -> float:
    model.eval()
    n = (len(stream) - 1) // ctx
    windows = stream[: n * ctx + 1]
    inputs = windows[:-1].view(n, ctx)
    targets = windows[1:].view(n, ctx)
    total, count = 0.0, 0
    for i in range(0, n, 32):
        logits = model(inputs[i : i + 32]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets[i : i + 32].reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += targets[i : i + 32].numel()
    model.train()
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("normprobe/demo"))
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=0, help="save a checkpoint every K steps (0: only the final model)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    started = time.time()

    train_docs, valid_docs = split_corpus()
    tokenizer = train_tokenizer(train_docs, args.vocab_size)
    train_stream = token_stream(tokenizer, train_docs)
    valid_stream = token_stream(tokenizer, valid_docs)

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=args.seq_len,
        n_embd=args.d_model,
        n_layer=args.n_layer,
        n_head=4,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)),
    )
    generator = torch.Generator().manual_seed(args.seed)
    checkpoint_dir = args.checkpoint_dir or args.out.parent / "demo-checkpoints"

    def save(folder: Path, step: int, valid_loss: float) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "training_state.json").write_text(json.dumps({"step": step, "valid_loss": valid_loss}) + "\n")

    if args.save_every:
        save(checkpoint_dir / "step-0", 0, evaluate(model, valid_stream, args.seq_len))
    model.train()
    for step in range(1, args.steps + 1):
        starts = torch.randint(0, len(train_stream) - args.seq_len - 1, (args.batch_size,), generator=generator)
        batch = torch.stack([train_stream[s : s + args.seq_len + 1] for s in starts.tolist()])
        loss = model(batch[:, :-1], labels=batch[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0:
            print(f"step {step} train loss {loss.item():.3f}", flush=True)
        if args.save_every and step % args.save_every == 0 and step != args.steps:
            save(checkpoint_dir / f"step-{step}", step, evaluate(model, valid_stream, args.seq_len))

    valid_loss = evaluate(model, valid_stream, args.seq_len)
    save(args.out, args.steps, valid_loss)
    if args.save_every:
        save(checkpoint_dir / f"step-{args.steps}", args.steps, valid_loss)
    n_params = sum(p.numel() for p in model.parameters())
    card = {
        "architecture": "GPT-2",
        "n_layer": args.n_layer,
        "d_model": args.d_model,
        "n_head": 4,
        "context": args.seq_len,
        "vocab_size": len(tokenizer),
        "parameters": n_params,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "train_tokens_seen": args.steps * args.batch_size * args.seq_len,
        "train_corpus_tokens": len(train_stream),
        "valid_corpus_tokens": len(valid_stream),
        "valid_loss": round(valid_loss, 4),
        "uniform_loss": round(math.log(len(tokenizer)), 4),
        "seed": args.seed,
        "torch": torch.__version__,
        "seconds": round(time.time() - started, 1),
    }
    (args.out / "training_state.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
