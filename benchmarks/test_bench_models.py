"""pytest-benchmark suite: one training step (forward, backward, AdamW) of each fastseq model against the
same model on torch.nn layers, and greedy generation; tiny sizes on a CPU, the GPU preset on a GPU.

    pytest benchmarks/test_bench_models.py --benchmark-group-by=param:name
"""
import pytest
import torch

import bench_models
from fastseq.generation import generate
from torch_layers import torch_layers

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PRESET = "gpu" if DEVICE == "cuda" else "quick"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32


@pytest.mark.parametrize("impl", ["fastseq", "torch.nn"])
@pytest.mark.parametrize("name", sorted(bench_models.PRESETS[PRESET]))
def test_train_step(benchmark, name, impl):
    build, B, S, T = bench_models.PRESETS[PRESET][name]
    torch.manual_seed(0)
    model = build().to(device=DEVICE, dtype=DTYPE).train()
    if impl == "torch.nn":
        model = torch_layers(model)
    step = bench_models._train_step(model, bench_models._batch(name, model, B, S, T, DEVICE))

    def run():
        step()
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"train {name}"
    benchmark(run)


@pytest.mark.parametrize("name", bench_models.GENERATORS)
def test_greedy_generation(benchmark, name):
    B, S, new = bench_models.GENERATION[PRESET]
    torch.manual_seed(0)
    model = bench_models.PRESETS[PRESET][name][0]().to(device=DEVICE, dtype=DTYPE).eval()
    vocab = getattr(model.config, "src_vocab_size", None) or model.config.vocab_size
    inputs = torch.randint(4, vocab, (B, S), device=DEVICE)
    out = benchmark(lambda: generate(model, inputs, max_new_tokens=new, eos_id=None))
    assert out.tokens.shape == (B, new)
