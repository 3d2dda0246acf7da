"""Reference point for the ONNX Runtime benchmark: the same checkpoint exported by PyTorch's own
ONNX exporter (Hugging Face BertForSequenceClassification, opset 17), benchmarked beside our
Rust-exported graphs in one ONNX Runtime process, same batching as benches/inference.rs
(sorted by length, padded to the longest of each batch, 2 intra-op threads).

Not part of the build or the tests (it needs torch + transformers from PyPI):
  python3 -m venv .cache/refpy && .cache/refpy/bin/pip install onnxruntime==1.31.1 torch transformers tokenizers numpy
  .cache/refpy/bin/python benches/reference_export.py CHECKPOINT_DIR OUR_MODEL.onnx [...]
CHECKPOINT_DIR is a Hugging Face layout directory, e.g. ~/.cache/emostream/runs/minilm-l6/best.
"""
import sys
import time

import subprocess

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

EXPORT = """
import sys, torch
from transformers import BertForSequenceClassification
m = BertForSequenceClassification.from_pretrained(sys.argv[1], num_labels=28, ignore_mismatched_sizes=True).eval()
x = torch.ones(2, 16, dtype=torch.long)
axes = {k: {0: "b", 1: "s"} for k in ["input_ids", "attention_mask", "token_type_ids"]}
axes["logits"] = {0: "b"}
torch.onnx.export(m, (x, x, torch.zeros_like(x)), sys.argv[2], input_names=list(axes)[:3],
                  output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False)
"""

ckpt, ours = sys.argv[1], sys.argv[2:]
ref = "/tmp/reference-pytorch-export.onnx"
# Export in a child process: torch's thread pool in this process slowed ONNX Runtime ~8x.
subprocess.run([sys.executable, "-c", EXPORT, ckpt, ref], check=True)

tok = Tokenizer.from_file(f"{ckpt}/tokenizer.json")
tok.no_padding()  # a checkpoint's tokenizer.json may pad every text to 128
tok.no_truncation()
texts = [l.split("\t")[0] for l in open("../shared/data/goemotions/test.tsv", encoding="utf8").read().splitlines() if l]
enc = [e.ids[:128] for e in tok.encode_batch(texts)]
order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
for path in [ref] + ours:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    for bs in [1, 32]:
        idx = order if bs > 1 else order[::5][:1000]
        feeds = []
        for k in range(0, len(idx), bs):
            b = idx[k:k + bs]
            L = max(len(enc[i]) for i in b)
            ids = np.zeros((len(b), L), np.int64)
            mask = np.zeros((len(b), L), np.int64)
            for r, i in enumerate(b):
                ids[r, :len(enc[i])] = enc[i]
                mask[r, :len(enc[i])] = 1
            f = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in names:
                f["token_type_ids"] = np.zeros_like(ids)
            feeds.append(f)
        s.run(None, feeds[len(feeds) // 2])
        t = time.time()
        for f in feeds:
            s.run(None, f)
        print(f"{path} batch {bs}: {len(idx) / (time.time() - t):.0f} comments/s")
