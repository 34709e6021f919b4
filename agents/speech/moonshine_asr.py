"""Moonshine base-en (the English model inside the `moonshine-cpp` wheel) run by onnxruntime from Python.

Why not the wheel's own library: its `libmoonshine.so` is built with AVX-512 and dies with SIGILL on CPUs without it
(this machine), and its `.ort` files dequantise every weight on every decoder step (about 100 ms a token, measured).
So the `.ort` graphs are converted once to ONNX (subgraph names filled in, which the ORT-format export leaves empty)
into a cache directory; loaded as ONNX, onnxruntime folds the dequantisation into constants at load time and a decoder
step costs about 16 ms on one core (measured).

A decoder step multiplies one token's vector by every weight matrix, so it is bound by reading the weights: folded to
float32 that is about 165 MB a step. The decoder is therefore rewritten once more (`_int8_matmuls`): each MatMul on a
dequantised weight becomes onnxruntime's `DynamicQuantizeMatMul` on the model's own int8 weights, scale and zero
point, so only the activations are quantised (per step, per tensor). A cached step took 8.5 against 20.7 ms of CPU,
and 50 Asterisk prompts through G.711 (132 s) gave the same transcripts word for word in 9.4 against 12.9 s of CPU
(measured on a machine shared with other work).
Hand-written because onnxruntime's `quantize_dynamic` wants float weights and would quantise the dequantised weights
again on a grid of its own, rather than use the int8 values the model ships.

Decoding is greedy. A `hint` (the tokens of an earlier pass over a prefix of the same utterance) is verified in one
teacher-forced decoder pass: the tokens the model still agrees with are kept, decoding continues from the first
disagreement. The result is exactly what plain greedy decoding gives, at the cost of one pass for the agreed part;
that is what makes the final transcript of an incrementally transcribed utterance quick.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agents.speech.asr import SAMPLE_RATE, AsrError, Audio, Transcript, cache_dir

_LAYERS = 8
_HEADS = 8
_HEAD_DIM = 52
_BOS, _EOS = 1, 2
_TOKENS_PER_S = 6.5
"""Moonshine's own decode limit is 6 tokens per second of audio; a little slack for fast talkers."""


def wheel_model_dir() -> Path:
    """The base-en model folder inside the installed `moonshine-cpp` wheel (found without importing it)."""
    spec = importlib.util.find_spec("moonshine_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise AsrError("moonshine: the moonshine-cpp package is not installed (pip install moonshine-cpp==0.1.4)")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "base-en"


def _convert(ort_path: Path, onnx_path: Path) -> None:
    """Serialise an ORT-format graph as ONNX and name its unnamed subgraphs (ONNX requires names)."""
    import onnx
    import onnxruntime as ort

    raw = onnx_path.with_suffix(f".{os.getpid()}.raw.onnx")  # per process: two may convert at once
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.optimized_model_filepath = str(raw)
    ort.InferenceSession(str(ort_path), so, providers=["CPUExecutionProvider"])
    model = onnx.load(str(raw))

    def name(graph: Any, path: str) -> None:
        if not graph.name:
            graph.name = path
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    name(attr.g, f"{path}/{node.name}/{attr.name}")

    name(model.graph, ort_path.stem)
    tmp = onnx_path.with_suffix(f".{os.getpid()}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, onnx_path)  # atomic: a reader sees the old state or the whole file
    raw.unlink()


def _int8_matmuls(src: Path, out: Path) -> None:
    """Rewrite `src` so that every MatMul whose weight is a dequantised int8 initializer (the export's
    `Cast -> Mul(scale) -> Add(offset)` chains, per tensor) runs as `DynamicQuantizeMatMul` on the int8 values; a
    `Transpose` of such a weight (the tied output projection) gets a transposed int8 copy. Other uses of a weight
    (the token embedding's `Gather`) keep the float chain."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    made = {o: n for n in graph.node for o in n.output}
    weights: dict[str, tuple[str, str, str]] = {}
    """Float weight tensor -> (int8 initializer, scale, zero point) for DynamicQuantizeMatMul."""
    added: list[Any] = []
    for add in graph.node:
        if add.op_type != "Add" or add.input[1] not in inits or add.input[0] not in made:
            continue
        mul = made[add.input[0]]
        cast = made.get(mul.input[0]) if mul.op_type == "Mul" else None
        if cast is None or cast.op_type != "Cast" or cast.input[0] not in inits or mul.input[1] not in inits:
            continue
        q = numpy_helper.to_array(inits[cast.input[0]])
        scale = numpy_helper.to_array(inits[mul.input[1]])
        zero = -numpy_helper.to_array(inits[add.input[1]]) / scale  # w = q * scale + offset = (q - zero) * scale
        if q.dtype != np.int8 or scale.size != 1 or not np.allclose(zero, np.round(zero), atol=1e-3):
            continue
        zp = cast.input[0] + "_zero_point"
        added.append(numpy_helper.from_array(np.round(zero).astype(np.int8).reshape(()), zp))
        weights[add.output[0]] = (cast.input[0], mul.input[1], zp)

    def rewrite(g: Any) -> None:
        for i, node in enumerate(list(g.node)):
            if node.op_type == "Transpose" and node.input[0] in weights \
                    and [list(a.ints) for a in node.attribute if a.name == "perm"] in ([], [[1, 0]]):
                q, scale, zp = weights[node.input[0]]
                if q + "_T" not in inits:
                    inits[q + "_T"] = numpy_helper.from_array(
                        np.ascontiguousarray(numpy_helper.to_array(inits[q]).T), q + "_T")
                    added.append(inits[q + "_T"])
                weights[node.output[0]] = (q + "_T", scale, zp)
            elif node.op_type == "MatMul" and node.input[1] in weights:
                q, scale, zp = weights[node.input[1]]
                g.node.remove(node)
                g.node.insert(i, helper.make_node("DynamicQuantizeMatMul", [node.input[0], q, scale, zp],
                                                  list(node.output), name=node.name, domain="com.microsoft"))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    rewrite(attr.g)

    rewrite(graph)
    graph.initializer.extend(added)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, out)


def prepared_models(model_dir: Path | None = None) -> tuple[Path, Path, Path]:
    """(encoder.onnx, decoder.onnx with int8 MatMuls, tokenizer.bin), converting the wheel's .ort files on first
    use."""
    src = model_dir or wheel_model_dir()
    ort_files = [src / "encoder_model.ort", src / "decoder_model_merged.ort", src / "tokenizer.bin"]
    for f in ort_files:
        if not f.is_file():
            raise AsrError(f"moonshine: model file {f} is missing")
    digest = hashlib.sha256()
    for f in ort_files:
        st = f.stat()
        digest.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    out = cache_dir() / f"moonshine-base-en-{digest.hexdigest()[:12]}"
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for f in ort_files[:2]:
        target = out / (f.stem + ".onnx")
        if not target.exists():
            try:
                _convert(f, target)
            except Exception as e:
                raise AsrError(f"moonshine: cannot convert {f} to ONNX in {out}: {e}") from e
        results.append(target)
    dec = out / "decoder_model_merged.int8mm.onnx"
    if not dec.exists():
        try:
            _int8_matmuls(results[1], dec)
        except Exception as e:
            raise AsrError(f"moonshine: cannot rewrite {results[1]} with int8 MatMuls: {e}") from e
    return results[0], dec, ort_files[2]


def load_tokenizer(path: Path) -> list[bytes]:
    """moonshine's tokenizer.bin: one entry per token id, each a length (1 byte, or 2 as a varint) then the bytes."""
    data = path.read_bytes()
    tokens: list[bytes] = []
    i = 0
    while i < len(data):
        n = data[i]
        i += 1
        if n >= 0x80:
            n = (n & 0x7F) | (data[i] << 7)
            i += 1
        tokens.append(data[i : i + n])
        i += n
    return tokens


@dataclass(frozen=True)
class _Step:
    logits: npt.NDArray[np.float32]
    past: dict[str, npt.NDArray[np.float32]]


class MoonshineAsr:
    """English ASR; `threads` is onnxruntime's intra-op thread count."""

    name = "moonshine"

    def __init__(self, model_dir: str | None = None, threads: int = 1) -> None:
        self._model_dir = Path(model_dir) if model_dir else None
        self._threads = threads
        self._lock = threading.Lock()
        self._sessions: tuple[Any, Any, list[bytes], list[str]] | None = None

    def load(self) -> None:
        with self._lock:
            if self._sessions is not None:
                return
            import onnxruntime as ort

            enc_path, dec_path, tok_path = prepared_models(self._model_dir)
            so = ort.SessionOptions()
            so.intra_op_num_threads = self._threads
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            try:
                enc = ort.InferenceSession(str(enc_path), so, providers=["CPUExecutionProvider"])
                dec = ort.InferenceSession(str(dec_path), so, providers=["CPUExecutionProvider"])
            except Exception as e:
                raise AsrError(f"moonshine: cannot load {enc_path.parent}: {e}") from e
            outputs = [o.name for o in dec.get_outputs()]
            self._sessions = (enc, dec, load_tokenizer(tok_path), outputs)

    def transcribe(self, audio: Audio, final: bool, hint: Transcript | None = None) -> Transcript:
        self.load()
        assert self._sessions is not None
        enc, dec, vocab, outputs = self._sessions
        audio_s = len(audio) / SAMPLE_RATE
        if len(audio) < SAMPLE_RATE // 4:  # the encoder needs a quarter second
            return Transcript("", "en", 0.0, final, audio_s)
        hidden = enc.run(None, {"input_values": audio[None, :].astype(np.float32)})[0]
        limit = int(audio_s * _TOKENS_PER_S) + 4
        hint_tokens = list(hint.tokens[:limit]) if hint is not None else []
        tokens, logprobs = self._decode(dec, outputs, hidden, hint_tokens, limit)
        text = b"".join(vocab[t] for t in tokens if t < len(vocab)).decode("utf-8", "replace")
        text = text.replace("\u2581", " ").strip()
        conf = float(np.exp(np.mean(logprobs))) if logprobs else 0.0
        return Transcript(text, "en", round(conf, 3), final, audio_s, tokens=tuple(tokens))

    @staticmethod
    def _run(dec: Any, outputs: list[str], ids: list[int], hidden: npt.NDArray[np.float32],
             past: dict[str, npt.NDArray[np.float32]] | None) -> _Step:
        if past is None:
            empty = np.zeros((1, _HEADS, 0, _HEAD_DIM), np.float32)
            feeds = {f"past_key_values.{layer}.{side}.{kv}": empty
                     for layer in range(_LAYERS) for side in ("decoder", "encoder") for kv in ("key", "value")}
        else:
            feeds = dict(past)
        res = dec.run(None, {"input_ids": np.asarray([ids], np.int64), "encoder_hidden_states": hidden,
                             "use_cache_branch": np.asarray([past is not None]), **feeds})
        new_past = dict(feeds)
        for name, value in zip(outputs[1:], res[1:], strict=True):
            if past is not None and ".encoder." in name:
                continue  # the cross-attention cache is computed once, on the first pass
            new_past[name.replace("present", "past_key_values")] = value
        return _Step(res[0][0], new_past)

    def _decode(self, dec: Any, outputs: list[str], hidden: npt.NDArray[np.float32], hint: list[int],
                limit: int) -> tuple[list[int], list[float]]:
        step = self._run(dec, outputs, [_BOS, *hint], hidden, None)
        tokens: list[int] = []
        logprobs: list[float] = []
        for i, logits in enumerate(step.logits):
            tok, lp = _pick(logits)
            if i < len(hint) and tok == hint[i]:
                tokens.append(tok)
                logprobs.append(lp)
                continue
            if i == 0 < len(hint):
                # the pass over BOS + hint predicted EOS at its first position for a partial "When are you open?",
                # which emptied the whole question's final transcript: decode from BOS alone, as without a hint
                step = self._run(dec, outputs, [_BOS], hidden, None)
                tok, lp = _pick(step.logits[-1])
            elif i < len(hint):  # disagreement: drop the cache past the agreed prefix
                keep = len(tokens) + 1
                step = _Step(step.logits, {k: (v[:, :, :keep] if ".decoder." in k else v)
                                           for k, v in step.past.items()})
            nxt, nlp = tok, lp
            break
        while nxt != _EOS and len(tokens) < limit and not _looping(tokens):
            tokens.append(nxt)
            logprobs.append(nlp)
            step = self._run(dec, outputs, [nxt], hidden, step.past)
            nxt, nlp = _pick(step.logits[-1])
        return tokens, logprobs


def _pick(logits: npt.NDArray[np.float32]) -> tuple[int, float]:
    tok = int(logits.argmax())
    shifted = logits - logits[tok]
    return tok, -float(np.log(np.exp(shifted).sum()))


def _looping(tokens: list[int]) -> bool:
    """A greedy decoder stuck repeating itself (on noise): the last 4 tokens repeated 3 times."""
    n = 4
    if len(tokens) < 3 * n:
        return False
    tail = tokens[-n:]
    return tokens[-2 * n : -n] == tail and tokens[-3 * n : -2 * n] == tail
