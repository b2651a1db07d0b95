"""No second copy of any weight, weights loaded in their dtype, the placement and the batch size recorded."""

from __future__ import annotations

import json

import pytest
import torch

import normprobe
from normprobe.fused_qkv import split_copy_bytes

from .conftest import TEST_DEVICE
from .reference import assert_float32_close

IDS = torch.tensor([[0, 5, 9, 33, 7, 120, 3, 64, 200, 11]])


def _residuals(adapter, reads_patterns: bool | None) -> list[torch.Tensor]:
    """resid_pre of every layer; None runs whatever attention the bridge has (straight after loading)."""
    if reads_patterns is not None:
        adapter.select_attention(reads_patterns)
    seen = {}
    hooks = [
        (adapter.hook_name("resid_pre", l), lambda act, hook, l=l: seen.__setitem__(l, act.detach().clone()))
        for l in range(adapter.n_layers)
    ]
    with torch.inference_mode():
        ids = IDS.to(adapter.device)
        adapter.forward(ids, torch.ones_like(ids), hooks)
    return [seen[l].cpu() for l in range(adapter.n_layers)]


def _weight_bytes(module) -> int:
    """Bytes of distinct storages behind a module's parameters."""
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in module.parameters()}
    return sum(storages.values())


def test_split_qkv_copies_exist_only_while_the_bridge_runs_attention(family_dir, hf_model):
    # GPT-NeoX fuses query_key_value with heads interleaved: TransformerLens's split q/k/v are copies
    adapter = normprobe.load_model(str(family_dir("gpt_neox")), device=TEST_DEVICE)
    reference = {kind: hf_model(family_dir("gpt_neox"), kind) for kind in ("eager", "sdpa")}
    own = _weight_bytes(reference["eager"])
    assert split_copy_bytes(adapter.bridge) == 0 and _weight_bytes(adapter.bridge) == own  # not built at boot
    try:
        eager = _residuals(adapter, None)  # the bridge's own attention, straight after loading: built now
        copies = split_copy_bytes(adapter.bridge)
        assert 0.1 * own < copies < 0.3 * own and _weight_bytes(adapter.bridge) == own + copies
        fast = _residuals(adapter, False)
        assert split_copy_bytes(adapter.bridge) == 0 and _weight_bytes(adapter.bridge) == own
        again = _residuals(adapter, True)  # rebuilt from the fused weights, bit for bit
        assert split_copy_bytes(adapter.bridge) == copies
        assert all(torch.equal(a, b) for a, b in zip(again, eager))
    finally:
        adapter.select_attention(False)
    for kind, got in (("eager", eager), ("sdpa", fast)):
        with torch.no_grad():
            want = reference[kind](IDS, output_hidden_states=True, use_cache=False).hidden_states
        for layer, h in enumerate(got):
            assert_float32_close(h.numpy(), want[layer].numpy(), rel=1e-5, what=f"{kind} layer {layer}")


def test_gpt2_split_qkv_are_views_of_the_fused_weights(family_adapter):
    from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import JointQKVAttentionBridge

    adapter = family_adapter("gpt2")
    adapter.select_attention(True)
    try:
        joint = [m for m in adapter.bridge.modules() if isinstance(m, JointQKVAttentionBridge)]
        assert len(joint) == adapter.n_layers
        for module in joint:
            fused = module.original_component.c_attn.weight.untyped_storage().data_ptr()
            assert {getattr(module, n).original_component.weight.untyped_storage().data_ptr() for n in "qkv"} == {fused}
        assert split_copy_bytes(adapter.bridge) == 0
    finally:
        adapter.select_attention(False)


def _counting_weight_reads(module, reads: list) -> None:
    module.register_forward_pre_hook(lambda mod, args: reads.append(type(mod).__name__))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_pass_over_the_blocks_never_reads_the_unembedding(family, family_adapter):
    """The head is a vocabulary-sized weight: a probe of the blocks must not make it resident."""
    adapter = family_adapter(family)
    reads: list[str] = []
    head = adapter.hf_model.get_output_embeddings()
    _counting_weight_reads(getattr(head, "original_component", head), reads)  # the Linear itself, inside the bridge
    last = adapter.n_layers - 1
    got = {}
    for attention in (False, True):
        adapter.select_attention(attention)
        hooks = [(adapter.hook_name("resid_post", last), lambda act, hook: got.__setitem__("h", act.detach().clone()))]
        with torch.inference_mode():
            ids = IDS.to(adapter.device)
            adapter.forward(ids, torch.ones_like(ids), hooks)
        assert reads == [], f"the unembedding ran ({attention=})"
    adapter.select_attention(False)
    # ... and the blocks still ran to the end: the last block's output is Hugging Face's, before its final norm
    with torch.inference_mode():
        want = adapter.hf_model(IDS.to(adapter.device), output_hidden_states=True)
    final_norm = adapter.hf_model.model.norm if family == "llama" else adapter.hf_model.transformer.ln_f
    with torch.inference_mode():  # hidden_states[-1] is after the final norm: take h through it
        normed = final_norm(got["h"]).cpu().numpy()
    assert_float32_close(normed, want.hidden_states[-1].cpu().numpy(), rel=1e-5, what=f"{family} last block")


def test_the_bridge_keeps_w_e_pos_which_its_boot_scan_skips(family_adapter):
    adapter = family_adapter("gpt2")
    want = torch.cat([adapter.hf_model.transformer.wte.weight, adapter.hf_model.transformer.wpe.weight])
    assert torch.equal(adapter.bridge.W_E_pos, want)


def test_bfloat16_checkpoint_loads_without_a_float32_copy(tmp_path, tokenizers_by_kind):
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(tmp_path)
    tokenizers_by_kind["split"].save_pretrained(tmp_path)

    class Float32Allocations(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.device.type != "meta":
                    self.largest = max(self.largest, t.numel())
            return out

    with Float32Allocations() as seen:
        adapter = normprobe.load_model(str(tmp_path), device=TEST_DEVICE, dtype="bfloat16")
    params = list(adapter.hf_model.parameters())
    assert {p.dtype for p in params} == {torch.bfloat16}
    # only rotary frequencies (head_dim / 2 values) are float32: no weight matrix went through float32
    assert seen.largest <= config.hidden_size // config.num_attention_heads // 2 < min(p.numel() for p in params if p.dim() == 2)


def test_device_map_places_layers_across_memory_and_disk_exactly(tmp_path, family_dir, hf_model):
    folder = family_dir("llama")
    reference = hf_model(folder, "sdpa")
    own = _weight_bytes(reference)
    adapter = normprobe.load_model(
        str(folder), device_map="auto", max_memory_per_device={"cpu": own // 2}, offload_folder=str(tmp_path / "offload")
    )
    placement = adapter.placement()
    assert placement["device_map"] == "auto" and set(placement["weight_bytes_by_device"]) == {"cpu", "disk"}
    assert 0 < placement["weight_bytes_by_device"]["cpu"] <= own // 2
    assert sum(placement["weight_bytes_by_device"].values()) == own
    assert set(placement["modules"].values()) == {"cpu", "disk"}
    got = _residuals(adapter, False)
    with torch.no_grad():
        want = reference(IDS, output_hidden_states=True, use_cache=False).hidden_states
    for layer, h in enumerate(got):
        assert torch.equal(h, want[layer]), layer


def test_run_json_records_placement_and_the_batch_size_with_its_reason(tmp_path, capsys):
    from normprobe.cli import main
    from normprobe.memory import READOUT_BYTES, window_bytes

    out = tmp_path / "run"
    cap = READOUT_BYTES + 5 * window_bytes(128, 4, 64, False) + 1000  # room for five windows of 64 tokens
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "run",
                "demo",
                "--device-map",
                "auto",
                "--max-memory",
                str(cap),
                "--seq-len",
                "64",
                "--max-docs",
                "12",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
    assert exc.value.code == 0, capsys.readouterr().err
    meta = json.loads((out / "run.json").read_text())
    assert meta["batch_size"] == 5 and meta["memory_budget_bytes"] == cap
    assert meta["batch_size_reason"].startswith("5 window(s) of 64 tokens") and "--max-memory" in meta["batch_size_reason"]
    assert meta["n_batches"] == -(-meta["n_windows"] // 5)
    assert meta["placement"]["device_map"] == "auto" and meta["placement"]["modules"]
    from safetensors import safe_open

    from normprobe.adapter import DEMO_DIR

    with safe_open(str(DEMO_DIR / "model.safetensors"), "pt") as weights:  # the checkpoint, counted once
        checkpoint = sum(weights.get_tensor(k).numel() * 4 for k in weights.keys())
    placed = meta["placement"]["weight_bytes_by_device"]  # accelerate's "auto" takes a GPU where there is one
    assert list(placed.values()) == [checkpoint] and (TEST_DEVICE != "cpu" or list(placed) == ["cpu"])
    assert meta["options"]["max_memory"] == str(cap)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-memory", "8 bananas"], "--max-memory must be a size like 8GB"),
        (["--max-memory", "0GB"], "--max-memory must be at least 1MiB"),
        (["--device-map", "everywhere"], "--device-map must be one of auto"),
        (["--device-map", "auto", "--device", "cpu"], "leave out --device cpu"),  # cpu on purpose: refused before loading
    ],
)
def test_bad_memory_options_fail_in_one_line_before_loading(extra, message, tmp_path, capsys, monkeypatch):
    import normprobe.adapter as adapter
    from normprobe.cli import main

    monkeypatch.setattr(adapter.ModelAdapter, "from_source", classmethod(lambda *a, **k: pytest.fail("model loaded")))
    with pytest.raises(SystemExit) as exc:
        main(["run", "demo", "--out", str(tmp_path / "out"), "--no-progress", *extra])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 1 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_an_accelerator_gets_its_weights_directly(monkeypatch):
    """On a GPU the bridge is asked for device_map {"": device}: accelerate puts each tensor there as it is
    read, where `device=` would load the whole model on the CPU and then move it."""
    from transformer_lens.model_bridge import TransformerBridge

    import normprobe.adapter as adapter

    asked = {}

    def boot(location, **kwargs):
        asked.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(adapter, "pick_device", lambda device: device)
    monkeypatch.setattr(TransformerBridge, "boot_transformers", staticmethod(boot))
    with pytest.raises(normprobe.NormprobeError):
        adapter.load_model("demo", device="cuda:1", dtype="bfloat16")
    assert asked["device_map"] == {"": "cuda:1"} and "device" not in asked and asked["dtype"] == torch.bfloat16
