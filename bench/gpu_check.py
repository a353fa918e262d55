"""GPU check of the LLM side: a random-initialised ~1B LLaMA, effort batched vs batch size 1, one bf16 epoch.

Run through bench/gpu_check.sh on a machine with a CUDA GPU. Prints one table and writes
bench/results/gpu_check.json. Weights are random (nothing can be downloaded); speed and memory do not care.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dealrec_tasks.llm.config import EffortConfig, FinetuneConfig, LoRAConfig, TinyLLMConfig
from dealrec_tasks.llm.effort import EffortScorer, attach_lora, effort_reference
from dealrec_tasks.llm.finetune import per_sample_loss
from dealrec_tasks.llm.prompts import PromptTemplate
from dealrec_tasks.llm.tiny import train_tokenizer

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--train-prompts", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cpu-smoke", action="store_true", help="a 2-layer model on the CPU: checks the script only")
    args = parser.parse_args()
    device = "cpu" if args.cpu_smoke else "cuda"
    assert args.cpu_smoke or torch.cuda.is_available(), "needs a CUDA GPU (or --cpu-smoke)"
    from transformers import LlamaConfig, LlamaForCausalLM

    import bench.effort as effort_bench  # Games prompts, same sampling as the CPU benchmark

    items = effort_bench.pq.read_table(effort_bench.GAMES / "items.parquet").column("title").to_pylist()
    tokenizer = train_tokenizer(items, PromptTemplate("games"), TinyLLMConfig().vocab_size)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device, dtype=torch.float32 if args.cpu_smoke else torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    peft_model = attach_lora(model, LoRAConfig())
    prompts = effort_bench.games_prompts(tokenizer, args.prompts + args.train_prompts, seed=0)
    score_set, train_set = prompts[: args.prompts], prompts[args.prompts :]
    tokens = sum(len(p.input_ids) for p in score_set)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu smoke run"
    result = {"parameters": n_params, "gpu": gpu, "prompts": args.prompts}

    def timed(fn):
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
        return out, time.perf_counter() - t0, peak

    cfg = EffortConfig(batch_size=args.batch_size)
    ref, t_ref, m_ref = timed(lambda: effort_reference(peft_model, score_set, cfg))
    ours, t_ours, m_ours = timed(lambda: EffortScorer(peft_model, tokenizer.pad_token_id, cfg).score(score_set))
    result["effort"] = {
        "batch1_seconds": t_ref,
        "batched_seconds": t_ours,
        "speedup": t_ref / t_ours,
        "batch1_tokens_per_s": tokens / t_ref,
        "batched_tokens_per_s": tokens / t_ours,
        "peak_gib_batch1": m_ref,
        "peak_gib_batched": m_ours,
        "spearman_vs_batch1": float(np.corrcoef(np.argsort(np.argsort(ref)), np.argsort(np.argsort(ours)))[0, 1]),
    }

    ft_cfg = FinetuneConfig()
    peft_model.train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=ft_cfg.lr)

    def one_epoch():
        for i in range(0, len(train_set), ft_cfg.micro_batch_size):
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                loss = per_sample_loss(
                    peft_model, train_set[i : i + ft_cfg.micro_batch_size], tokenizer.pad_token_id, True
                ).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    _, t_ft, m_ft = timed(one_epoch)
    train_tokens = sum(len(p.input_ids) for p in train_set)
    result["finetune_epoch"] = {
        "prompts": len(train_set),
        "seconds": t_ft,
        "tokens_per_s": train_tokens / t_ft,
        "peak_gib": m_ft,
    }
    out = REPO / "bench" / "results" / ("gpu_check_cpu_smoke.json" if args.cpu_smoke else "gpu_check.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    e, f = result["effort"], result["finetune_epoch"]
    print(f"{result['gpu']}, model {n_params / 1e9:.2f}B parameters (random init, bf16)")
    print(
        f"effort batch-1 : {e['batch1_seconds']:.1f} s, {e['batch1_tokens_per_s']:,.0f} tok/s, "
        f"{e['peak_gib_batch1']:.1f} GiB"
    )
    print(
        f"effort batched : {e['batched_seconds']:.1f} s, {e['batched_tokens_per_s']:,.0f} tok/s, "
        f"{e['peak_gib_batched']:.1f} GiB -> {e['speedup']:.1f}x (target >= 10x)"
    )
    print(
        f"fine-tune epoch: {f['prompts']} prompts, {f['seconds']:.1f} s, {f['tokens_per_s']:,.0f} tok/s, "
        f"{f['peak_gib']:.1f} GiB"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
