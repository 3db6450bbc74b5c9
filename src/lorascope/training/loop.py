"""The LoRA reranker training loop (run by the ``train_lora`` stage, :mod:`.stage`).

Tevatron's "RankLLaMA from scratch" recipe (RECIPE.md) on a prepared base directory: a
one-output sequence classifier, LoRA on the requested roles, the score head (and BERT's
pooler) trained in full, softmax cross-entropy over each group with the positive at index 0,
no in-batch negatives. Adapters are saved at exactly the configured steps as
``out_dir/step-{step}/`` (peft format), the loss log as ``out_dir/train_log.csv``.

Runs are deterministic (same settings and hardware, same adapters bit for bit) and resumable:
``out_dir/state/`` is updated at every checkpoint, and a run started again over an interrupted
one continues from there and ends with exactly the adapters an uninterrupted run writes.

LoRA variants (:mod:`lorascope.core.variants`) map onto peft: ``use_dora``, ``use_rslora`` and
``init`` (``init_lora_weights`` = ``pissa`` / ``olora`` / ``eva``). PiSSA and OLoRA rewrite the
base weights of the training model (W = W_res + s B0 A0), so their untrained adapter is saved
once as ``out_dir/initial/`` - published with the checkpoints, and what extraction subtracts to
express a checkpoint as a delta on the original base. EVA initialises A from the principal
components of the target layers' inputs on the run's first optimizer step of training groups,
r per module (``rho = 1``: no rank redistribution, so the rank in the adapter's name holds).
A resumed run rebuilds PiSSA/OLoRA's residual base deterministically and skips the EVA
computation: the state it restores overwrites A and B anyway.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorascope.core import fileio, roles, variants
from lorascope.core.names import INITIAL_ADAPTER, TRAIN_LOG, checkpoint_name
from lorascope.core.precision import describe
from lorascope.training import state as train_state
from lorascope.training.groups import Group, GroupOrder, load_groups
from lorascope.training.init import eva_config, initialize_eva
from lorascope.training.settings import Runtime, TrainSettings, resolve_runtime

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

log = logging.getLogger(__name__)

LOG_FILE = TRAIN_LOG
LOG_COLUMNS = ("step", "loss", "lr", "pairs_per_s", "elapsed_s")
SUMMARY_FILE = "training.json"
CHECKPOINT_FILE = "checkpoint.json"


def fingerprint(
    base_dir: str | Path, train_groups_path: str | Path, settings: TrainSettings,
    code: str | None, runtime: Runtime,
) -> dict[str, Any]:
    """Everything that shapes a training run: its settings, what they resolve to on this
    machine (device, precision, attention, gradient checkpointing: ``precision: auto`` on
    another node may be another precision), the base weights' sha256, the training groups'
    content digest (provenance left out), the code version of the stage (``None``: not given,
    e.g. called from Python) and the versions of the libraries that compute it."""
    from lorascope.core.contracts import content_digest
    from lorascope.core.provenance import versions
    from lorascope.models.base import weights_digest

    return {
        "settings": settings.to_dict(),
        "runtime": {"device": runtime.device, "precision": runtime.precision.resolved,
                    "attention": runtime.attention,
                    "gradient_checkpointing": runtime.gradient_checkpointing},
        "base_weights_sha256": weights_digest(base_dir),
        "train_groups": content_digest(train_groups_path),
        "code": code,
        "libraries": versions(),
    }


def train(
    base_dir: str | Path,
    train_groups_path: str | Path,
    settings: TrainSettings,
    out_dir: str | Path,
    progress: bool = True,
    *,
    stop_after: int | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """Train a LoRA reranker and save adapters at the configured steps.

    The run holds ``out_dir`` exclusively (:class:`~lorascope.training.state.WorkDirLock`).
    A saved state of the same run (same :func:`fingerprint`) is resumed; the state of any
    other run - other settings, base weights, training data or code - is discarded, with a
    warning naming what differs, and the run starts afresh.

    Args:
        base_dir: a prepared base model directory.
        train_groups_path: a ``train_groups`` Parquet table.
        settings: the run.
        out_dir: receives ``step-{N}/``, ``train_log.csv``, ``state/`` and ``training.json``.
        progress: show a tqdm bar.
        stop_after: stop once this step is done (for tests and time-boxed jobs); the run
            resumes from its last checkpoint when started again.
        code: the stage's code version (the rule's ``params.code``), part of the fingerprint.

    Returns:
        A summary: steps done, whether the run is complete, last loss, elapsed seconds.

    Raises:
        WorkDirBusy: another trainer holds ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with train_state.WorkDirLock(out_dir):
        return train_locked(base_dir, train_groups_path, settings, out_dir, progress,
                            stop_after=stop_after, code=code)


def train_locked(
    base_dir: str | Path,
    train_groups_path: str | Path,
    settings: TrainSettings,
    out_dir: Path,
    progress: bool = True,
    *,
    stop_after: int | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """:func:`train` for a caller that holds ``out_dir``'s
    :class:`~lorascope.training.state.WorkDirLock` itself (e.g. to publish the run before
    anyone else can touch it)."""
    import torch

    runtime = resolve_runtime(settings)
    groups = load_groups(train_groups_path, settings.group_size)
    group_size = len(groups[0].passages)
    run = fingerprint(base_dir, train_groups_path, settings, code, runtime)
    saved = train_state.state_dir(out_dir)
    resumed = train_state.load_progress(saved) if saved is not None else None
    if resumed is not None and resumed.fingerprint != run:
        differ = sorted(k for k in set(run) | set(resumed.fingerprint)
                        if run.get(k) != resumed.fingerprint.get(k))
        log.warning("%s holds the state of another run (it differs in: %s); discarding it and "
                    "training afresh", out_dir, ", ".join(differ))
        _discard_run(out_dir)
        saved = resumed = None
    if resumed is not None and resumed.step >= settings.total_steps:
        log.info("%s: training already complete (%d steps)", out_dir, resumed.step)
        summary = _summary(resumed.step, settings, resumed.log_rows, resumed.elapsed_s)
        if not (out_dir / SUMMARY_FILE).is_file():
            fileio.write_json(
                out_dir / SUMMARY_FILE,
                _provenance(base_dir, train_groups_path, settings, runtime, summary, run),
            )
        return summary
    if resumed is None:
        _discard_run(out_dir)  # checkpoints of a run whose state never got written
    _remove_partial_writes(out_dir)

    order = GroupOrder(len(groups), settings.seed)
    with _deterministic(runtime.device):
        _seed_everything(settings.seed)
        model, tokenizer, arch = _build_model(base_dir, settings, runtime)
        if settings.init == "eva" and resumed is None:
            initialize_eva(model, tokenizer, arch, settings, runtime, groups, order)
        if variants.rewrites_base(settings.init) and (
            resumed is None or not (initial_dir(out_dir) / "adapter_model.safetensors").is_file()
        ):
            _save_initial(model, out_dir)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        optimizer = torch.optim.AdamW(
            list(trainable.values()), lr=settings.lr, weight_decay=settings.weight_decay
        )
        scheduler = _scheduler(optimizer, settings)
        step, position, elapsed, rows = 0, 0, 0.0, []
        if resumed is not None and saved is not None:
            train_state.restore_state(saved, trainable, optimizer, scheduler)
            step, position, elapsed = resumed.step, resumed.position, resumed.elapsed_s
            rows = list(resumed.log_rows)
            log.info("resuming %s from step %d", out_dir, step)
        loop = _Loop(model, tokenizer, arch, settings, runtime, groups, group_size)
        checkpoints = set(settings.steps)
        bar = _progress_bar(settings.total_steps, step, progress)
        with bar:
            while step < settings.total_steps:
                started = time.perf_counter()
                indices = order.take(position, settings.queries_per_step)
                lr = scheduler.get_last_lr()[0]
                loss = loop.step(indices, optimizer)
                scheduler.step()
                step += 1
                position += settings.queries_per_step
                seconds = time.perf_counter() - started
                elapsed += seconds
                pairs_per_s = settings.queries_per_step * group_size / seconds
                rows.append(
                    {
                        "step": step,
                        "loss": loss,
                        "lr": lr,
                        "pairs_per_s": round(pairs_per_s, 2),
                        "elapsed_s": round(elapsed, 3),
                    }
                )
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", pairs_s=f"{pairs_per_s:.0f}")
                if step in checkpoints:
                    probe = loop.probe_scores()
                    _save_checkpoint(model, out_dir, step, settings, base_dir, probe,
                                     describe(runtime.precision), run)
                    _write_log(out_dir, rows)
                    train_state.save_state(
                        out_dir,
                        train_state.Progress(step, position, elapsed, tuple(rows), run),
                        trainable,
                        optimizer,
                        scheduler,
                    )
                if stop_after is not None and step >= stop_after:
                    break
    summary = _summary(step, settings, rows, elapsed)
    if summary["complete"]:
        fileio.write_json(
            out_dir / SUMMARY_FILE,
            _provenance(base_dir, train_groups_path, settings, runtime, summary, run),
        )
    log.info(
        "trained %d/%d steps in %.1fs (last loss %.4f)",
        step,
        settings.total_steps,
        elapsed,
        summary["last_loss"] or float("nan"),
    )
    return summary


# --------------------------------------------------------------------------- model


def _build_model(
    base_dir: str | Path, settings: TrainSettings, runtime: Runtime
) -> tuple[PeftModel, Any, roles.ArchitectureRoles]:
    """The base reranker with LoRA on the target roles; head (and pooler) fully trainable."""
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    from lorascope.models.reranker import load_reranker

    model, tokenizer, arch = load_reranker(
        base_dir,
        device=runtime.device,
        dtype=runtime.precision.dtype,
        quantize_4bit=settings.quantize_4bit,
        attention=runtime.attention,
        dropout=settings.base_dropout,
    )
    target_roles = roles.resolve_targets(arch, settings.targets)
    modules = roles.target_modules(arch, target_roles, num_layers=roles.num_layers(model.config))
    if settings.quantize_4bit:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=runtime.gradient_checkpointing
        )
    elif runtime.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=modules,
        modules_to_save=list(arch.head_modules),
        use_rslora=settings.use_rslora,
        use_dora=settings.use_dora,
        init_lora_weights=variants.peft_init(settings.init),
        **eva_config(settings),
    )
    with warnings.catch_warnings():
        # EVA: peft suggests low_cpu_mem_usage, which would leave A and B on the meta device
        # until EVA has run (and DoRA's magnitudes uncomputed); our models are small enough.
        warnings.filterwarnings("ignore", message=".*eva initialization used with low_cpu_mem")
        peft_model = get_peft_model(model, config)
    _check_lora_modules(peft_model, arch, modules)
    if runtime.bf16:  # fp32 master weights for what is trained; the frozen base stays bf16
        for param in peft_model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    # peft rewrites a long target list into minimal suffixes (BERT's "output.dense" then also
    # names attention.output.dense's tail); keep the full names in the saved adapter_config so
    # that downstream stages read (layer, role) pairs from it without ambiguity.
    peft_model.peft_config["default"].target_modules = sorted(modules)
    peft_model.train()
    n_train = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    log.info(
        "LoRA r=%d on %s (%d modules, %s): %d trainable parameters",
        settings.rank,
        ",".join(target_roles),
        len(modules),
        _variant_text(settings),
        n_train,
    )
    return peft_model, tokenizer, arch


def _variant_text(settings: TrainSettings) -> str:
    names = variants.from_flags(
        dora=settings.use_dora, rslora=settings.use_rslora, init=settings.init
    )
    return "+".join(names) or variants.PLAIN


def _check_lora_modules(model: Any, arch: roles.ArchitectureRoles, modules: list[str]) -> None:
    """Fail loudly unless LoRA wraps exactly the requested modules."""
    from peft.tuners.lora import LoraLayer

    wrapped = {
        roles.parse_module_name(arch, name)
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }
    wanted = {roles.parse_module_name(arch, name) for name in modules}
    if wrapped != wanted:
        raise RuntimeError(
            f"LoRA wrapped {sorted(map(str, wrapped))}, expected {sorted(map(str, wanted))}"
        )


def _scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings) -> Any:
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    if settings.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, settings.warmup_steps)
    horizon = settings.decay_steps or settings.total_steps
    return get_linear_schedule_with_warmup(optimizer, settings.warmup_steps, horizon)


@dataclass(frozen=True)
class _Loop:
    """One optimizer step: micro-batches of groups, accumulated gradients."""

    model: Any
    tokenizer: Any
    arch: roles.ArchitectureRoles
    settings: TrainSettings
    runtime: Runtime
    groups: Sequence[Group]
    group_size: int

    def probe_scores(self) -> dict[str, Any]:
        """Eval-mode scores of the first training group at this point of training.

        Stored with every checkpoint so that an extracted adapter can be shown to reproduce
        the scores it had at training time. Eval mode draws no random numbers, so this does
        not disturb the run's RNG stream (determinism and resume are unaffected).
        """
        import torch

        from lorascope.models.reranker import encode_pairs, score_logits

        group = self.groups[0]
        batch = encode_pairs(
            self.tokenizer, self.arch, [group.query] * len(group.passages), list(group.passages),
            self.settings.max_length,
        )
        batch = {k: v.to(self.runtime.device) for k, v in batch.items()}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.runtime.autocast():
                scores = score_logits(self.model(**batch).logits).float().tolist()
        finally:
            self.model.train(was_training)
        return {"query": group.query, "passages": list(group.passages), "scores": scores}

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The scores (float32, pair order) of an encoded micro-batch, with gradients.

        With ``settings.batch_tokens`` the pairs go through the model in length-sorted
        sub-batches of at most that many padded tokens, each cut to its longest pair (inputs
        are right-padded), and the scores are put back in pair order: the same loss with far
        less padding (measured on MiniLM, 196-token pairs: padded/real 1.75 -> 1.14, a step
        1.6x faster on a CPU).
        """
        import torch

        from lorascope.core.batches import plan_batches
        from lorascope.models.reranker import score_logits

        device = self.runtime.device
        budget = self.settings.batch_tokens
        lengths = batch["attention_mask"].sum(1).tolist()
        plan = [list(range(len(lengths)))] if budget is None else plan_batches(lengths, budget)
        parts = []
        for rows in plan:
            width = max(lengths[i] for i in rows)
            index = torch.tensor(rows)
            sub = {k: v[index, :width].to(device) for k, v in batch.items()}
            with self.runtime.autocast():
                parts.append(score_logits(self.model(**sub).logits).float())
        if len(plan) == 1 and plan[0] == sorted(plan[0]):
            return parts[0]
        order = torch.tensor([i for rows in plan for i in rows], device=parts[0].device)
        return torch.cat(parts)[torch.argsort(order)]

    def step(self, indices: Sequence[int], optimizer: torch.optim.Optimizer) -> float:
        import torch
        import torch.nn.functional as F

        from lorascope.models.reranker import encode_pairs

        settings, total = self.settings, len(indices)
        loss_sum = 0.0
        for start in range(0, total, settings.micro_batch_queries):
            chunk = [self.groups[i] for i in indices[start : start + settings.micro_batch_queries]]
            queries = [g.query for g in chunk for _ in g.passages]
            passages = [p for g in chunk for p in g.passages]
            batch = encode_pairs(self.tokenizer, self.arch, queries, passages, settings.max_length)
            scores = self._forward(batch).view(len(chunk), self.group_size)
            target = torch.zeros(len(chunk), dtype=torch.long, device=scores.device)
            loss = F.cross_entropy(scores, target, reduction="sum") / total
            loss.backward()
            loss_sum += loss.item()
        if settings.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], settings.max_grad_norm
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_sum


# --------------------------------------------------------------------------- determinism


@contextlib.contextmanager
def _deterministic(device: str) -> Iterator[None]:
    """Deterministic torch kernels for the duration of training (restored afterwards)."""
    import torch

    if device.startswith("cuda"):
        # cuBLAS needs a fixed workspace to be deterministic; must be set before first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


# --------------------------------------------------------------------------- outputs


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=not enabled)


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    """Where the adapter of ``step`` is saved."""
    return Path(out_dir) / checkpoint_name(step)


def initial_dir(out_dir: str | Path) -> Path:
    """Where a PiSSA/OLoRA run keeps its untrained adapter (A0, B0 and the initial head)."""
    return Path(out_dir) / INITIAL_ADAPTER


def _save_initial(model: PeftModel, out_dir: Path) -> None:
    with fileio.atomic_dir(initial_dir(out_dir)) as tmp:
        model.save_pretrained(tmp)
    log.info("saved the initial %s adapter in %s", model.peft_config["default"].init_lora_weights,
             initial_dir(out_dir))


def _save_checkpoint(
    model: PeftModel,
    out_dir: Path,
    step: int,
    settings: TrainSettings,
    base_dir: str | Path,
    probe: dict[str, Any],
    precision: dict[str, Any],
    run: dict[str, Any],
) -> None:
    with fileio.atomic_dir(checkpoint_dir(out_dir, step)) as tmp:
        model.save_pretrained(tmp)
        fileio.write_json(
            tmp / CHECKPOINT_FILE,
            {"step": step, "base_dir": str(base_dir), "settings": settings.to_dict(),
             "fingerprint": run, "precision": precision, "probe": probe},
        )


def run_files(out_dir: Path) -> list[Path]:
    """What a run writes into its work directory and publishes: the checkpoints, the initial
    adapter of PiSSA/OLoRA, the loss log and the summary (not the resume state, not the lock,
    and nothing else a user keeps there)."""
    own = re.compile(rf"^(step-\d+|{re.escape(INITIAL_ADAPTER)}|{re.escape(LOG_FILE)}|"
                     rf"{re.escape(SUMMARY_FILE)})$")
    return sorted(p for p in out_dir.iterdir() if own.match(p.name))


def _discard_run(out_dir: Path) -> None:
    """Remove what a run left in ``out_dir`` (:func:`run_files`, its state and its temporary
    writes); files of anyone else stay where they are."""
    for path in [*run_files(out_dir), *(out_dir / n for n in train_state.STATE_DIRS)]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    _remove_partial_writes(out_dir)


def _remove_partial_writes(out_dir: Path) -> None:
    """Temporary checkpoint/state directories left by a run killed while writing them."""
    for path in out_dir.glob(".*.tmp-*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _write_log(out_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    fileio.write_text(out_dir / LOG_FILE, buffer.getvalue())


def read_log(out_dir: str | Path) -> list[dict[str, float]]:
    """The rows of ``train_log.csv`` with numeric values."""
    with open(Path(out_dir) / LOG_FILE, newline="") as handle:
        return [
            {k: (int(v) if k == "step" else float(v)) for k, v in row.items()}
            for row in csv.DictReader(handle)
        ]


def _summary(
    step: int, settings: TrainSettings, rows: Sequence[dict[str, Any]], elapsed: float
) -> dict[str, Any]:
    return {
        "steps_done": step,
        "complete": step >= settings.total_steps,
        "last_loss": rows[-1]["loss"] if rows else None,
        "first_loss": rows[0]["loss"] if rows else None,
        "elapsed_s": round(elapsed, 3),
        "checkpoints": [s for s in settings.steps if s <= step],
    }


def _provenance(
    base_dir: str | Path,
    groups_path: str | Path,
    settings: TrainSettings,
    runtime: Runtime,
    summary: dict[str, Any],
    run: dict[str, Any],
) -> dict[str, Any]:
    from lorascope.models.base import read_manifest
    from lorascope.core.packages import package_version

    base = read_manifest(base_dir) or {}
    versions = {lib: package_version(lib) for lib in ("torch", "transformers", "peft", "lorascope")}
    return {
        "settings": settings.to_dict(),
        "runtime": {**dataclasses.asdict(runtime), "precision": describe(runtime.precision)},
        "base_dir": str(base_dir),
        "base_source": base.get("source"),
        "base_weights_sha256": base.get("weights_sha256"),
        "train_groups": str(groups_path),
        "train_groups_sha256": fileio.sha256_file(groups_path),
        "fingerprint": run,
        "summary": summary,
        "versions": versions,
    }
