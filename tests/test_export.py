"""``tinylm export``: Hugging Face and ONNX exports compute tinylm's logits, at tiny sizes.

The reference is always the run's own model on its own backend (numpy, torch
or torch-module); the exports are read back by transformers and onnxruntime.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from tinylm import export, runs  # noqa: E402
from tinylm.cli import main  # noqa: E402
from tinylm.errors import ConfigError  # noqa: E402
from tinylm.rng import RNG  # noqa: E402
from tinylm.sample import sample_items, sample_tokens  # noqa: E402

TOL = 1e-5
NAMES = ["anna", "bob", "carla", "dave", "emma", "frank", "gina", "hugo", "ida", "jon", "kim",
         "lea", "max", "nia", "otto", "paul", "rosa", "sam", "tina", "ugo"]
TRANSFORMER = ["--model", "transformer", "--n-embd", "16", "--n-layers", "2", "--n-heads", "4",
               "--block-size", "8", "--batch-size", "16", "--lr", "0.01", "--eval-every", "50"]
# one tiny run of each neural model, on the backends between them
KINDS = {
    "bigram": ["--model", "bigram", "--steps", "3"],
    "mlp": ["--model", "mlp", "--context", "3", "--n-embd", "4", "--n-hidden", "8",
            "--backend", "torch"],
    "bnmlp": ["--model", "bnmlp", "--context", "3", "--n-embd", "4", "--n-hidden", "8",
              "--n-layers", "2"],
    "wavenet": ["--model", "wavenet", "--context", "4", "--n-embd", "4", "--n-hidden", "8",
                "--backend", "torch-module"],
    "transformer": ["--model", "transformer", "--n-embd", "8", "--n-layers", "1", "--n-heads", "2",
                    "--block-size", "8"],
    "rnn": ["--model", "rnn", "--n-embd", "4", "--n-embd2", "8", "--block-size", "7",
            "--backend", "torch"],
    "gru": ["--model", "gru", "--n-embd", "4", "--n-embd2", "8", "--block-size", "7"],
}


def snapshot(path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def names_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "names.txt"
    path.write_text("\n".join(NAMES * 3) + "\n")
    return path


@pytest.fixture(scope="module")
def transformer_run(tmp_path_factory, names_file):
    """A tiny Transformer trained until its greedy items end in a newline."""
    out = tmp_path_factory.mktemp("runs") / "transformer"
    assert main(["train", "-i", str(names_file), "-o", str(out), *TRANSFORMER,
                 "--steps", "150", "-n", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def hf_export(tmp_path_factory, transformer_run):
    before = snapshot(transformer_run)
    out = tmp_path_factory.mktemp("exports") / "hf"
    done = export.export(transformer_run, "hf", out)
    assert snapshot(transformer_run) == before  # the run directory is only read
    return done


@pytest.fixture(scope="module")
def hf_model(hf_export):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(hf_export.path).eval(),
            AutoTokenizer.from_pretrained(hf_export.path))


# --- Hugging Face ------------------------------------------------------------------------------

def test_the_hf_export_is_a_gpt2_checkpoint_of_the_run(hf_export, transformer_run):
    assert sorted(os.listdir(hf_export.path)) == sorted(export.HF_FILES)
    config = json.loads((hf_export.path / "config.json").read_text())
    run = runs.open_run(transformer_run)
    mc = run.model_config
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["vocab_size"], config["n_positions"], config["n_embd"], config["n_layer"],
            config["n_head"]) == (mc.vocab_size, mc.block_size, mc.n_embd, mc.n_layers, mc.n_heads)
    # tinylm's GELU is the tanh form (tinylm.layers.numpy_layers.GELU), its LayerNorm eps 1e-5
    assert config["activation_function"] == "gelu_new"
    assert config["layer_norm_epsilon"] == 1e-5
    assert config["tie_word_embeddings"] is False
    from safetensors.numpy import load_file

    tensors = load_file(hf_export.path / "model.safetensors")
    state = run.model.state_dict()
    # Conv1D holds (in, out): the transpose of nn.Linear's weight; qkv needs no reordering
    np.testing.assert_array_equal(tensors["transformer.h.1.attn.c_attn.weight"],
                                  state["blocks.1.attn.qkv.weight"].T)
    np.testing.assert_array_equal(tensors["lm_head.weight"], state["lm_head.weight"])
    marker = json.loads((hf_export.path / export.MARKER).read_text())
    assert marker["format"] == export.FORMAT and marker["step"] == 150
    assert marker["arrays"] == run.manifest["arrays"]
    assert hf_export.max_error <= TOL


def test_hf_logits_equal_tinylms(hf_model, transformer_run):
    hf, tokenizer = hf_model
    run = runs.open_run(transformer_run)
    ids = [tokenizer(name)["input_ids"] for name in ("emma", "otto", "carla", "rosa", "ugo")]
    assert ids[0] == [0] + run.tokenizer.encode("emma")  # "\n" first, as tinylm starts an item
    rows = [row + [0] * (8 - len(row)) for row in ids] + \
        export.check_ids(run.model_config.vocab_size, 3, 8).tolist()
    idx = np.array(rows, dtype=np.int64)                                        # (8, 8)
    want = export.reference_logits(run.model, idx)                              # (8, 8, V)
    with torch.no_grad():
        ids = torch.from_numpy(idx)
        got = hf(ids, attention_mask=torch.ones_like(ids)).logits
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=TOL)
    with torch.no_grad():  # and a prefix alone: the causal mask is the same
        short = hf(torch.from_numpy(idx[:, :3])).logits.numpy()
    np.testing.assert_allclose(short, want[:, :3], rtol=0, atol=TOL)


@pytest.mark.parametrize("prompt", ["", "e", "ot", "ca", "ros"])
def test_greedy_generation_gives_tinylms_top_k_1_items(hf_model, transformer_run, prompt):
    hf, tokenizer = hf_model
    run = runs.open_run(transformer_run)
    item = sample_items(run.model, run.tokenizer, 1, RNG(7), prompt=prompt, top_k=1)[0]
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False)[0].tolist()
    new = out[ids.shape[1]:]
    assert new[-1] == 0, "the item ends at the end-of-text token within the block"
    assert prompt + tokenizer.decode(new[:-1]) == item
    assert len(item) >= 2


def test_the_pipeline_generates_the_same_item(hf_export, transformer_run):
    from transformers import pipeline

    run = runs.open_run(transformer_run)
    generate = pipeline("text-generation", model=str(hf_export.path))
    for prompt in ("e", "ca"):
        item = sample_items(run.model, run.tokenizer, 1, RNG(1), prompt=prompt, top_k=1)[0]
        assert generate(prompt, do_sample=False)[0]["generated_text"] == item


def test_the_tokenizer_is_one_character_one_token(hf_model, transformer_run):
    _, tokenizer = hf_model
    run = runs.open_run(transformer_run)
    text = "".join(run.tokenizer.itos)  # every character, the newline (id 0) first
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == list(range(len(text)))
    assert tokenizer.decode(run.tokenizer.encode("anna\nbob")) == "anna\nbob"
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == 0


def test_a_text_runs_export_keeps_line_breaks_and_generates_its_passage(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    doc = tmp_path / "doc.txt"
    doc.write_text("the cat sat.\non a mat.\nthe dog ran.\n" * 30)
    out = tmp_path / "run"
    assert main(["train", "--format", "text", "-i", str(doc), "-o", str(out), "--model",
                 "transformer", "--n-embd", "8", "--n-layers", "1", "--n-heads", "2",
                 "--block-size", "12", "--steps", "60", "--batch-size", "8", "-n", "0",
                 "--eval-every", "30"]) == 0
    done = export.export(out, "hf", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(done.path).eval()
    tokenizer = AutoTokenizer.from_pretrained(done.path)
    run = runs.open_run(out)
    ids = tokenizer("the ", return_tensors="pt")["input_ids"]
    with torch.no_grad():  # a passage has no end: generation stops at the block size
        new = hf.generate(ids, attention_mask=torch.ones_like(ids))[0, ids.shape[1]:].tolist()
    assert len(new) == 12 - ids.shape[1]
    assert "the " + tokenizer.decode(new) == sample_tokens(run.model, run.tokenizer, "the ",
                                                         len(new), RNG(3), top_k=1)
    assert tokenizer.decode(run.tokenizer.encode("a.\nc"), skip_special_tokens=True) == "a.\nc"


def test_module_state_dict_loads_a_runs_weights_into_the_torch_modules(transformer_run, tmp_path,
                                                                      names_file):
    """The documented way: safetensors.torch.load_file, then the nn.Module's own names."""
    from safetensors.torch import load_file

    from tinylm.models import build_model

    mlp = tmp_path / "mlp"
    assert main(["train", "-i", str(names_file), "-o", str(mlp), *KINDS["bnmlp"], "--steps", "5",
                 "-n", "0"]) == 0
    for path in (transformer_run, mlp):
        run = runs.open_run(path)
        file = path / run.manifest["arrays"]["file"]
        assert file.suffix == ".safetensors"
        model = build_model(run.model_config, "torch-module", RNG(5))  # other weights
        model.net.load_state_dict(export.module_state_dict(load_file(file),
                                                           run.model_config.model))
        idx = export.check_ids(run.model_config.vocab_size, 4, model.context)
        np.testing.assert_allclose(export.reference_logits(model, idx),
                                   export.reference_logits(run.model, idx), rtol=0, atol=TOL)


# --- ONNX ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(KINDS))
def test_onnx_logits_equal_tinylms_for_every_neural_model(tmp_path, names_file, kind):
    import onnxruntime

    out = tmp_path / "run"
    flags = KINDS[kind] if "--steps" in KINDS[kind] else [*KINDS[kind], "--steps", "5"]
    assert main(["train", "-i", str(names_file), "-o", str(out), *flags, "-n", "0",
                 "--batch-size", "8"]) == 0
    before = snapshot(out)
    done = export.export(out, "onnx", tmp_path / "model.onnx")
    assert snapshot(out) == before
    assert done.max_error <= TOL
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "run"]  # no temporary file left
    run = runs.open_run(out)  # on the backend it was trained on
    session = onnxruntime.InferenceSession(str(done.path), providers=["CPUExecutionProvider"])
    meta = export.onnx_metadata(done.path)
    assert json.loads(meta["tinylm.vocab"]) == list(run.tokenizer.itos)
    T = run.model.context if kind in ("transformer", "rnn", "gru") else run.model.reads
    for batch in (1, 5):
        idx = export.check_ids(run.model_config.vocab_size, batch, T, seed=batch)
        got = session.run(["logits"], {"idx": idx})[0]
        np.testing.assert_allclose(got, export.reference_logits(run.model, idx), rtol=0, atol=TOL)
    if kind == "transformer":  # any length up to the block size
        idx = export.check_ids(run.model_config.vocab_size, 2, 3)
        np.testing.assert_allclose(session.run(None, {"idx": idx})[0],
                                   export.reference_logits(run.model, idx), rtol=0, atol=TOL)
    if kind in ("rnn", "gru"):  # a fixed length: a shorter input is padded, its positions read
        idx = export.check_ids(run.model_config.vocab_size, 2, 3)
        padded = np.concatenate([idx, np.zeros((2, T - 3), dtype=np.int64)], axis=1)
        np.testing.assert_allclose(session.run(None, {"idx": padded})[0][:, :3],
                                   export.reference_logits(run.model, idx), rtol=0, atol=TOL)


# --- the command, and what it refuses ------------------------------------------------------------

def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_the_command_exports_and_replaces_only_its_own_exports(transformer_run, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(transformer_run), "--to", "onnx", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"wrote {out} (ONNX model of the transformer run") and "checked" in said
    first = out.read_bytes()
    # an earlier export is replaced
    assert main(["export", str(transformer_run), "--to", "onnx", str(out)]) == 0
    assert out.read_bytes() == first  # the same run, the same bytes
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary left

    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"my own model")
    assert main(["export", str(transformer_run), "--to", "onnx", str(mine)]) == 2
    assert one_line(capsys) == (f"tinylm: error: {str(mine)!r} exists and is not an earlier "
                                "tinylm export to ONNX: it is left alone; choose another OUT or "
                                "remove it")
    assert mine.read_bytes() == b"my own model"

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "config.json").write_text("{}")
    assert main(["export", str(transformer_run), "--to", "hf", str(notes)]) == 2
    assert "is not an earlier tinylm export to Hugging Face" in one_line(capsys)
    assert os.listdir(notes) == ["config.json"]

    inside = transformer_run / "export"
    assert main(["export", str(transformer_run), "--to", "hf", str(inside)]) == 2
    assert "would be inside the run directory" in one_line(capsys)
    assert not inside.exists()


def test_an_earlier_hf_export_is_replaced_whole(transformer_run, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()  # an empty directory is no one's data
    export.export(transformer_run, "hf", out)
    first = snapshot(out)
    export.export(transformer_run, "hf", out)
    assert snapshot(out) == first
    assert sorted(os.listdir(tmp_path)) == ["hf"]


def test_what_cannot_be_exported_is_one_line(tmp_path, names_file, capsys):
    gru = tmp_path / "gru"
    assert main(["train", "-i", str(names_file), "-o", str(gru), *KINDS["gru"], "--steps", "1",
                 "-n", "0"]) == 0
    capsys.readouterr()
    assert main(["export", str(gru), "--to", "hf", str(tmp_path / "hf")]) == 2
    assert one_line(capsys) == (f"tinylm: error: --to hf writes GPT-2 checkpoints, which only a "
                                f"transformer run fits; the run in {str(gru)!r} is a gru model "
                                "(--to onnx exports every neural model)")
    ngram = tmp_path / "ngram"
    assert main(["train", "-i", str(names_file), "-o", str(ngram), "--model", "ngram", "-n",
                 "0"]) == 0
    capsys.readouterr()
    assert main(["export", str(ngram), "--to", "onnx", str(tmp_path / "m.onnx")]) == 2
    assert "is an n-gram count model; only neural runs export" in one_line(capsys)
    assert main(["export", str(tmp_path / "none"), "--to", "onnx", str(tmp_path / "m.onnx")]) == 2
    assert "does not exist" in one_line(capsys)
    assert main(["export", str(gru), "--to", "tf", str(tmp_path / "m")]) == 2
    assert "invalid choice" in one_line(capsys)
    assert not (tmp_path / "hf").exists() and not (tmp_path / "m.onnx").exists()
    with pytest.raises(ConfigError, match="unknown export target"):
        export.export(gru, "tflite", tmp_path / "m")
