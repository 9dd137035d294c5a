"""Pretraining: data → two augmented views → encoder f → head g → NT-Xent → optimizer.

The same loop for every modality (simclr.modality): images, time series and text differ only in
how they are loaded, augmented and encoded.

One process or many: under torchrun every rank takes its slice of each global batch, the loss
sees the negatives of all ranks, BatchNorm is synchronized, and rank 0 writes everything.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from simclr import dist
from simclr.augment import ImageAugment, two_views
from simclr.card import write_model_card
from simclr.checkpoint import remove_temporaries, restore_rng, rng_state, save_encoder, save_training_checkpoint
from simclr.compiled import CompiledStep
from simclr.config import Config, save_config
from simclr.data.prefetch import Prefetcher, place
from simclr.data.rows import Rows, concat
from simclr.device import resolve_device, use_bf16
from simclr.errors import UserError
from simclr.evaluate import knn_monitor
from simclr.experiment import evaluate_encoder, gather_eval_features, input_shape_of, load_datasets
from simclr.export import encoder_metadata
from simclr.extras import wanted
from simclr.global_bn import to_global_batchnorm
from simclr.loss import nt_xent
from simclr.metrics import MetricsLogger
from simclr.modality import Augment, Modality, Objective, resolve, trainer_of
from simclr.model import SimCLR, build_model, resolve_encoder
from simclr.optim import build_optimizer, lr_at, set_lr
from simclr.schedule import Schedule, optimizer_settings, parse_duration, plan, pretrain_on
from simclr.signals import SignalGuard

log = logging.getLogger("simclr")


def run_dir_name(cfg: Config) -> Path:
    """The run directory: `out`, or runs/<data>-<time> as rank 0 names it (every rank gets its path)."""
    out = Path(cfg.out) if cfg.out else Path("runs") / f"{Path(cfg.data.source).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    return Path(dist.broadcast_object(str(out)))


def make_run_dir(out: Path, model: nn.Module, keep: int) -> None:
    """Create the run directory, with room for the checkpoints and checked writable. Rank 0
    only (`dist.main_only`): it writes everything, and a node-local `out` exists on its node alone."""
    check_free_space(out, model, keep)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to output directory {out}: {e.strerror or e}") from None


def check_free_space(out: Path, model: nn.Module, keep: int) -> None:
    """Refuse to start when the disk cannot hold the checkpoints (weights + optimizer state,
    the kept ones plus the one being written), rather than fail hours later. `out` need not
    exist yet: the disk is its nearest existing parent's."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    needed = 3 * weights * (keep + 1)  # model, momentum buffers, slack for pickling
    free = shutil.disk_usage(existing_ancestor(out)).free
    if free < needed:
        raise UserError(f"{out} has {free / 2**20:.0f} MiB free; checkpoints need about {needed / 2**20:.0f} MiB")


def existing_ancestor(path: Path) -> Path:
    """`path` itself or its nearest parent that exists."""
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


@dataclass
class Training:
    """Everything the loop needs, built once by `setup`."""

    cfg: Config
    out: Path
    device: torch.device
    modality: Modality
    train_data: Any  # pretraining inputs (their labels, if any, only for evaluation); simclr.modality.Data
    test_data: Any | None  # labelled held-out inputs for evaluation, if there are labels
    inputs: torch.Tensor | Rows  # what SimCLR pretrains on: train_data's, plus test_data's with data.pretrain_on=all
    model: SimCLR  # the bare network: what checkpoints hold
    net: nn.Module  # what the loop calls: `model`, or its DistributedDataParallel wrapper
    augment: Augment
    optimizer: torch.optim.Optimizer
    schedule: Schedule  # batch, epochs, warm-up and learning rate (the config's, or sized to the data)
    local_batch: int  # this rank's share of the global batch
    channels_last: bool  # NHWC inputs and weights (image encoders)
    bf16: bool  # forward passes under bfloat16 autocast
    objective: Objective | None = None  # a modality's own loss (paired data); None: SimCLR's
    compiled: CompiledStep | None = None  # compile=true on images: the whole step compiled


def setup(cfg: Config) -> Training:
    """The run, built once; the settings the config leaves to the data (auto, None) chosen in
    `run.cfg`, which is what config.yaml and the checkpoints record."""
    dist.init_from_env(cfg.dist_timeout_s, cfg.device)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    world = dist.world_size()
    if cfg.batch_size and cfg.batch_size % world:
        raise UserError(f"batch_size {cfg.batch_size} (the global batch) must divide by the {world} ranks")
    modality = resolve(cfg)  # once: detection reads the file system
    train_data, test_data = load_datasets(cfg, modality)  # before the run directory: bad --data leaves nothing
    labelled = len(train_data) + (len(test_data) if test_data is not None else 0)
    cfg = replace(cfg, data=replace(cfg.data, pretrain_on=pretrain_on(
        cfg.data.pretrain_on, modality.pretrain_default, labelled, split_from_source=not cfg.data.eval_source)),
        optim=optimizer_settings(cfg.optim, modality.optimizer))
    inputs = train_data.inputs
    if cfg.data.pretrain_on == "all" and test_data is not None:  # held-out inputs, never their labels
        inputs = concat(inputs, test_data.inputs)
    schedule = plan(cfg, len(inputs), world, floor=modality.min_schedule)  # before the run directory
    cfg = replace(cfg, batch_size=schedule.batch_size)
    out = run_dir_name(cfg)
    shape = input_shape_of(train_data)
    if modality.name == "image":  # config.yaml, the checkpoint and the exports name the network built
        cfg = replace(cfg, model=replace(cfg.model, encoder=resolve_encoder(cfg.model.encoder, shape[-1])))
    own = trainer_of(modality)  # paired data brings its own network and loss
    if own is not None:
        model = own.build_model(cfg, shape, train_data).to(device)
    else:
        encoder = modality.build_encoder(cfg, shape, train_data)
        model = build_model(encoder, proj_dim=cfg.model.proj_dim, head_version=cfg.model.head_version).to(device)
    channels_last = nhwc(cfg, shape)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    bf16 = own is None and use_bf16(cfg.precision, device, modality.bf16_on_cpu)  # own loss: float32
    net: nn.Module = model
    if world > 1:
        if cfg.sync_batchnorm:  # the paper's global BN: statistics over the whole global batch
            model = to_global_batchnorm(model, cuda=device.type == "cuda")  # type: ignore[assignment]
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    o = cfg.optim
    assert o.weight_decay is not None  # optimizer_settings chose it
    optimizer = build_optimizer(model, o.name, schedule.peak_lr, o.weight_decay, o.momentum)
    augment = modality.build_augment(cfg, shape)
    compiled = None
    if cfg.compile and own is None and type(augment) is ImageAugment and len(shape) == 3:
        compiled = CompiledStep(net, optimizer, augment, cfg.temperature, bf16, channels_last, cfg.compile_mode,
                                fullgraph=world == 1)
    elif cfg.compile:  # `model` stays the plain module: checkpoints and evaluation use it
        net = torch.compile(net, mode=cfg.compile_mode)  # type: ignore[assignment]
    objective = own.objective(cfg, model, train_data, device) if own is not None else None
    # Last, once nothing above refused the run: a refused run leaves no directory behind.
    dist.main_only(lambda: make_run_dir(out, model, cfg.keep_checkpoints))
    return Training(
        replace(cfg, epochs=schedule.epochs), out, device, modality, train_data, test_data, inputs, model, net,
        augment, optimizer, schedule,
        local_batch=schedule.batch_size // world,
        channels_last=channels_last,
        bf16=bf16,
        objective=objective,
        compiled=compiled,
    )


def nhwc(cfg: Config, input_shape: list[int]) -> bool:
    """channels_last applies to image encoders: inputs (C, H, W), 4-D weights."""
    return cfg.channels_last and len(input_shape) == 3


def sized_to_budget(run: Training, images: torch.Tensor | Rows) -> Training:
    """With `time_budget`: the epochs that fit in it, at the step time of real steps of this run
    on this machine (timed after one untimed step, which takes any compilation, and the time it
    took counted against the budget). The weights, optimizer state and torch's global generators
    (dropout draws from them) are put back after: the run is then the run of that many epochs."""
    cfg = run.cfg
    budget_s = parse_duration(cfg.time_budget)  # type: ignore[arg-type]  # only called with a budget
    start = begin = time.perf_counter()
    weights, optimizer = copy.deepcopy(run.model.state_dict()), copy.deepcopy(run.optimizer.state_dict())
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if run.device.type == "cuda" else None
    gen = torch.Generator(device=run.device).manual_seed(cfg.seed)
    pick = torch.Generator().manual_seed(cfg.seed)
    set_lr(run.optimizer, run.schedule.peak_lr)
    batches = [torch.randperm(len(images), generator=pick)[: run.local_batch] for _ in range(TIMED_STEPS + 1)]
    with Prefetcher(images, batches, run.device) as feed:
        for i, (rows, x) in enumerate(feed):
            loss = step(run, rows, x, gen)
            if i == 0:  # the untimed first step: compilation, allocator, cuDNN's choices
                float(loss)
                begin = time.perf_counter()
    float(loss)  # waits for the device
    seconds = dist.broadcast_object((time.perf_counter() - begin) / TIMED_STEPS)  # rank 0's measure for all
    run.model.load_state_dict(weights)
    run.optimizer.load_state_dict(optimizer)
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    left = budget_s - (time.perf_counter() - start)
    schedule = plan(replace(cfg, epochs=None), len(images), dist.world_size(), seconds * LOOP_OVERHEAD, left,
                    batch_why=run.schedule.batch_why)
    epoch_s = seconds * LOOP_OVERHEAD * schedule.steps_per_epoch
    if epoch_s > left:  # a run is whole epochs: at least one
        log.warning("one epoch takes about %.0f s, more than the %.0f s the time budget leaves: training one epoch",
                    epoch_s, max(0.0, left))
    return replace(run, cfg=replace(cfg, epochs=schedule.epochs, time_budget=None), schedule=schedule)


# Steps timed for a time budget, and what the loop adds to them: metrics, the kNN monitor, a
# checkpoint every epoch (measured in docs/defaults.md, "A time budget").
TIMED_STEPS, LOOP_OVERHEAD = 5, 1.2


def step(run: Training, rows: torch.Tensor, x: torch.Tensor, aug_gen: torch.Generator) -> torch.Tensor:
    """One optimizer step on this rank's batch `x` (rows `rows` of the training inputs); the loss."""
    if run.objective is not None:  # the modality's own views and loss (paired data)
        return update(run.optimizer, run.objective(run.net, x, rows, aug_gen))
    if run.compiled is not None:  # the same views, forward, loss and update, compiled
        return run.compiled(x, aug_gen)
    x1, x2 = two_views(run.augment, x, aug_gen)  # (n, ...) each, per-sample randomness
    if run.channels_last:
        x1, x2 = (v.contiguous(memory_format=torch.channels_last) for v in (x1, x2))
    return train_step(run.net, run.optimizer, x1, x2, run.cfg.temperature, run.bf16)


def train_step(
    net: nn.Module, optimizer: torch.optim.Optimizer, x1: torch.Tensor, x2: torch.Tensor, temperature: float,
    bf16: bool = False,
) -> torch.Tensor:
    """One SimCLR update on two views of this rank's samples; returns the (local) loss."""
    with torch.autocast(x1.device.type, dtype=torch.bfloat16, enabled=bf16):
        z1, z2 = net(x1, x2)  # (n, proj_dim) each, both views in one forward pass
    # Outside autocast: nt_xent computes in float32 (a bf16 similarity matrix over thousands of
    # negatives loses the positives' margin).
    return update(optimizer, nt_xent(z1, z2, temperature))  # negatives from every rank


def update(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    return loss.detach()


@dataclass
class Progress:
    """Where the run is: enough, with the generators' states, to continue bit-exactly."""

    epoch: int = 0  # current epoch, 0-based
    batch: int = 0  # next batch within the epoch
    step: int = 0  # optimizer steps taken
    epoch_order_state: torch.Tensor | None = None  # order generator's state at the epoch start


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived; the loop saved a checkpoint and unwinds."""


def train_one_epoch(
    run: Training, progress: Progress, images: torch.Tensor | Rows, order_gen: torch.Generator,
    aug_gen: torch.Generator, logger: MetricsLogger, guard: SignalGuard,
) -> None:
    """The rest of the current epoch from `progress.batch`. Every rank draws the same global
    order; rank r takes the r-th slice of each global batch, read ahead by a `Prefetcher`.
    Nothing waits on the device between steps: whether the losses are finite is accumulated
    there and checked where the loop syncs anyway, at logging and before every checkpoint."""
    cfg = run.cfg
    run.net.train()
    order_gen.set_state(progress.epoch_order_state)  # type: ignore[arg-type]
    order = torch.randperm(len(images), generator=order_gen)
    s = run.schedule
    logger.set_epoch(progress.epoch + 1, s.epochs)
    rank_start = dist.rank() * run.local_batch
    batches = [order[b * s.batch_size + rank_start :][: run.local_batch]
               for b in range(progress.batch, s.steps_per_epoch)]
    finite = Finite(run.device, progress.step)
    with Prefetcher(images, batches, run.device) as feed:
        for rows, x in feed:
            lr = lr_at(progress.step, s.total_steps, s.warmup_steps, s.peak_lr)
            set_lr(run.optimizer, lr)
            loss = step(run, rows, x, aug_gen)
            finite.add(loss)
            progress.step += 1
            progress.batch += 1
            end_of_epoch = progress.batch == s.steps_per_epoch
            logger.count(s.batch_size)
            if logger.due(progress.step, end_of_epoch):
                finite.check(progress.step)
                values = {"loss": dist.mean(loss).item(), "lr": lr}
                if end_of_epoch and monitor_due(run, progress.epoch + 1):
                    values["knn"] = monitor_knn(run, images)
                logger.log(progress.step, progress.epoch + 1, values)
            if end_of_epoch:  # the next epoch starts from the generator's state now
                progress.epoch, progress.batch = progress.epoch + 1, 0
                progress.epoch_order_state = order_gen.get_state()
            stop = dist.any_rank(guard.requested is not None)
            every = cfg.checkpoint_every
            if stop or end_of_epoch or (every and progress.step % every == 0):
                finite.check(progress.step)  # never a checkpoint of weights a bad step reached
                save(run, progress, aug_gen)
            if stop:
                raise StopRequested


class Finite:
    """Whether every loss since the last check was finite, kept on the device (a flag per step
    would make the host wait for each step to finish)."""

    def __init__(self, device: torch.device, step: int) -> None:
        self.ok = torch.ones((), dtype=torch.bool, device=device)
        self.since = step  # the first step not yet checked

    def add(self, loss: torch.Tensor) -> None:
        self.ok &= torch.isfinite(loss).all()

    def check(self, step: int) -> None:
        """Raise if a loss of the steps since the last check was not finite (all ranks agree:
        the gathered negatives are shared); one sync."""
        if not bool(self.ok):
            steps = f"step {self.since}" if step - self.since <= 1 else f"steps {self.since}-{step - 1}"
            raise UserError(
                f"the loss was not finite at {steps}: lower optim.lr, raise the temperature, "
                "or train in float32; the last checkpoint is kept"
            )
        self.since = step


def monitor_due(run: Training, epoch: int) -> bool:
    """kNN accuracy on the held-out set every `eval_every` epochs and at the end (all ranks
    encode their share of the images)."""
    every = run.cfg.eval_every
    return labelled(run) and every > 0 and (epoch % every == 0 or epoch == run.schedule.epochs)


def labelled(run: Training) -> bool:
    return run.test_data is not None and run.train_data.labels is not None


def monitor_knn(run: Training, images: torch.Tensor | Rows) -> float:
    train, test = run.train_data, run.test_data
    assert test is not None and train.labels is not None and test.labels is not None
    encoder, k = run.model.encoder, run.cfg.eval_knn_k
    # The labelled training inputs are the first len(train) rows of what the loop trains on.
    return knn_monitor(encoder, images[: len(train)], train.labels, test.inputs, test.labels, run.device, k)


def save(run: Training, progress: Progress, aug_gen: torch.Generator) -> None:
    """Rank 0 writes the checkpoint, with every rank's augmentation generator state; if it
    cannot, every rank stops with its error."""
    aug_states = dist.all_gather_objects(aug_gen.get_state())
    dist.main_only(lambda: save_training_checkpoint(run.out, checkpoint_state(run, progress, aug_states), run.cfg))


def checkpoint_state(run: Training, progress: Progress, aug_states: list[torch.Tensor]) -> dict[str, Any]:
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "progress": {"epoch": progress.epoch, "batch": progress.batch, "step": progress.step},
        "epoch_order_state": progress.epoch_order_state,
        "rng": rng_state(aug_states),
        "input_shape": input_shape_of(run.train_data),  # (C, H, W), (C, T) or (L,): what the encoder takes
        "modality": run.modality.name,
        "metrics": (run.out / "metrics.jsonl").read_text() if (run.out / "metrics.jsonl").exists() else "",
    }


def restore(run: Training, state: dict[str, Any], aug_gen: torch.Generator) -> Progress:
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"checkpoint does not fit this model: {str(e).splitlines()[0]}") from None
    restore_rng(state["rng"], aug_gen, dist.rank(), dist.world_size())
    p = state["progress"]
    return Progress(p["epoch"], p["batch"], p["step"], state["epoch_order_state"])


def train(cfg: Config, resume_state: dict[str, Any] | None = None) -> tuple[Path, dict[str, dict[str, float]] | None]:
    """Pretrain (or continue from `resume_state`), export the encoder, evaluate it; returns the
    run directory and the results (None without labels, and on ranks other than 0)."""
    run = setup(cfg)
    main = dist.is_main_process()
    images = place(run.inputs, run.device, cfg.data.device_resident)  # uint8: augmentation converts
    if cfg.time_budget is not None and resume_state is None:
        run = sized_to_budget(run, images)
    cfg = run.cfg  # the settings chosen for this data and machine
    if main:
        remove_temporaries(run.out)  # what writes of a killed run left
        log.info("%s", run.schedule.why)
        save_config(cfg, run.out / "config.yaml", comment=run.schedule.why)
        # Both parts of a split source carry the source's list: name each file once.
        skipped = list(dict.fromkeys(run.train_data.skipped + (run.test_data.skipped if run.test_data else [])))
        (run.out / "skipped_files.txt").write_text("".join(f"{path}\t{why}\n" for path, why in skipped))
        if skipped:
            log.warning("skipped %d unreadable file(s), listed in %s", len(skipped), run.out / "skipped_files.txt")
        run.modality.save_artifacts(run.train_data, run.out)  # e.g. the tokenizer, beside the weights
    order_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=run.device).manual_seed(cfg.seed + 1 + dist.rank())
    progress = Progress(epoch_order_state=order_gen.get_state())
    if resume_state is not None:
        progress = restore(run, resume_state, aug_gen)
    log.info("%s %s: %d training inputs (%s) %s, %s on %s × %d, global batch %d, step %d of %d",
             "resuming" if resume_state else "run", run.out, len(images), run.modality.name,
             tuple(images.shape[1:]), type(run.model.encoder).__name__, run.device, dist.world_size(),
             cfg.batch_size, progress.step, run.schedule.total_steps)
    log.info("precision %s%s", "bf16 autocast (the loss and weights in float32)" if run.bf16 else "float32",
             f" (precision={cfg.precision})" if cfg.precision == "auto" else "")
    report = wanted("report", cfg.report)  # now: a missing [report] extra asked for stops before training
    metrics = run.out / "metrics.jsonl"
    if main and resume_state is not None and not metrics.exists():  # the run directory lost it
        metrics.write_text(resume_state.get("metrics", ""))
    logger = MetricsLogger(run.out, cfg.log_every, run.schedule.total_steps, progress.step, enabled=main,
                           tensorboard=cfg.tensorboard)
    try:
        with SignalGuard() as guard:
            while progress.epoch < run.schedule.epochs:
                train_one_epoch(run, progress, images, order_gen, aug_gen, logger, guard)
    except StopRequested:
        raise UserError(f"stopped at step {progress.step}; continue with: simclr train --resume {run.out}") from None
    finally:
        logger.close()
    if run.device.type == "cuda":
        log.info("peak device memory %.2f GiB", torch.cuda.max_memory_allocated(run.device) / 2**30)
    own = trainer_of(run.modality)
    features = None
    if labelled(run) and own is None:  # every rank encodes its share of the evaluation images
        assert run.test_data is not None
        features = gather_eval_features(cfg, run.modality, run.model.encoder, run.train_data, run.test_data, run.device)
    # Leave the group before the rest of the evaluation: fine-tuning copies of the encoder must
    # not try to synchronize BatchNorm with ranks that have finished.
    dist.barrier()
    dist.shutdown()
    if not main:
        return run.out, None
    save_encoder(run.out / "encoder.safetensors", run.model.encoder,
                 encoder_metadata(cfg, run.modality.name, input_shape_of(run.train_data)))
    results = None
    if own is not None:  # e.g. paired data: retrieval, zero-shot and the image probes
        results = own.evaluate_trained(cfg, run.model, run.train_data, run.test_data, run.device, run.out)
    elif features is not None:
        assert run.test_data is not None
        results = evaluate_encoder(
            cfg, run.modality, run.model.encoder, run.train_data, run.test_data, run.device, run.out, features=features,
            head=run.model.head,
        )
    if report:
        from simclr.report import build_report  # matplotlib: the [report] extra

        shown = run.test_data if run.test_data is not None else run.train_data
        build_report(run.out, run.model.encoder, shown, run.augment, run.device, cfg.seed,
                     gallery=run.modality.gallery)
        log.info("report: %s", run.out / "report.html")
    write_model_card(run.out, run.modality.name, input_shape_of(run.train_data), run.device)
    return run.out, results
