"""The configuration of a run: every knob, documented, with its default.

  python -m efficientnet_jax.main --config=configs/default.py --workdir=runs/x \
      --config.model.arch=b0 --config.optim.lr=1e-3

configs/*.py start from get_config() and override a few fields (configs/cars.py,
configs/demo.py).
"""

import ml_collections

from efficientnet_jax.models.options import ModelOptions


def _model() -> ml_collections.ConfigDict:
  """Every field of efficientnet_jax.models.ModelOptions (documented there) but the seed,
  which is config.seed: create_model(**config.model, seed=config.seed)."""
  defaults = ModelOptions(num_classes=196)
  return ml_collections.ConfigDict(
      {f: getattr(defaults, f) for f in ModelOptions.fields() if f != "seed"})


def _data() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  # Where the data is.
  d.dir = "data/stanford_cars"  # Your copy, any layout (see efficientnet_jax/data/layouts.py).
  d.tfds_dir = "data/tfds"  # Prepared ArrayRecord data (written once, when missing).
  d.bad_images = "error"  # Unreadable image at preparation: "error" (list them) or "skip".
  d.prepare_threads = 0  # Threads decoding images at preparation (0 = all cores).
  # How preparation stores images (efficientnet_jax/data/storage.py); each storage is its
  # own copy under tfds_dir, and a run uses (or prepares) the one these three fields name.
  # "original": the source JPEGs. "reduced": shorter side resized to storage_size
  # (Lanczos), JPEG at storage_quality: 1/5 of the originals' size, half their decode time.
  # "decoded": uint8 pixels at storage_size, uncompressed, nothing to decode: the fastest
  # input (benchmark input; README "Feeding a GPU"), 0.29 MB per 700x480 image at 258 px
  # (4.7 GB for Stanford Cars). A run whose image_size / eval crop_pct needs more pixels
  # than stored stops with an error; random zoom/crops and crop_to_bbox beyond them log a
  # warning (a mild upsample).
  d.storage = "decoded"
  d.storage_size = 0  # Stored shorter side in px; 0 = ceil(1.15 x image_size) (258 at 224).
  d.storage_quality = 90  # JPEG quality of "reduced".
  # Splits.
  d.val_split = "train"  # "train": hold val_fraction out of train; "test": as the original study.
  d.val_fraction = 0.1  # Share of each class held out of train as validation.
  d.split_seed = 0  # Seed of the held-out selection (independent of the training seed).
  # Input geometry.
  d.image_size = 224  # Output side in pixels (square).
  d.channels = 3  # 3 = RGB, 1 = grayscale (set model.in_channels to match).
  d.crop_to_bbox = False  # Crop to the annotated car bounding box first (train and eval).
  d.bbox_margin = 0.05  # Context kept around the box, as a fraction of its width/height.
  d.interpolation = "bilinear"  # Eval resize: "nearest", "bilinear" or "bicubic".
  d.train_warp = "supersample"  # Train warp: "supersample" (2x2 antialiased) or as above.
  d.jpeg_draft = True  # Let libjpeg decode at reduced size (1/2, 1/4, 1/8) when downscaling.
  # Training augmentation (set a strength to 0 to disable it).
  d.train_crop = "resize"  # "resize" (whole image, as the original) or "random_resized_crop".
  d.rrc_scale = (0.25, 1.0)  # random_resized_crop: area fraction range.
  d.rrc_ratio = (3 / 4, 4 / 3)  # random_resized_crop: aspect ratio range.
  d.hflip = 0.5  # Probability of a horizontal flip.
  d.rotate = 25.0  # Random rotation within +-degrees (one warp with translate/scale/shear).
  d.translate = 0.1  # Random shift within +-fraction of the output size.
  d.scale = (0.9, 1.1)  # Random zoom range.
  d.shear = 8.0  # Random x-shear within +-degrees.
  d.fill = 0  # Pixel value outside the warped image.
  d.brightness = 0.2  # Color jitter: factor in [1 - b, 1 + b].
  d.contrast = 0.2  # Color jitter: factor in [1 - c, 1 + c].
  d.saturation = 0.2  # Color jitter: factor in [1 - s, 1 + s] (RGB only).
  d.hue = 0.02  # Color jitter: shift within +-hue of a full turn (RGB only).
  # Automatic augmentation on top of the above (efficientnet_jax/data/augment.py): its
  # geometric ops join the one warp, its photometric ops follow the colour jitter.
  # "none", "randaugment" (timm's rand-m9-mstd0.5-inc1 with the ra_* fields),
  # "trivialaugment" (torchvision's TrivialAugmentWide) or "autoaugment" (ImageNet policy).
  d.auto_augment = "none"
  d.ra_num_ops = 2  # randaugment: ops drawn per image (with replacement), each applied p=0.5.
  d.ra_magnitude = 9.0  # randaugment: strength in [0, 10] (10 = each op's full range).
  d.ra_magnitude_std = 0.5  # randaugment: N(0, std) noise per op (inf: uniform in [0, m]).
  # Random erasing (timm's RandomErasing, efficientnet_jax/data/erasing.py), last.
  d.erase_prob = 0.0  # Probability per image; 0 = off (timm recipes: 0.25).
  d.erase_area = (0.02, 1 / 3)  # Erased fraction of the image (all boxes together).
  d.erase_aspect = (0.3, 1 / 0.3)  # Box height / width, log-uniform in this range.
  d.erase_count = (1, 1)  # Boxes per erased image, uniform in [min, max].
  # Fill: "pixel" (per-pixel noise, N(0, 1) after normalization), "rand" (one such colour
  # per box) or "const" (the mean colour, 0 after normalization).
  d.erase_mode = "pixel"
  # Evaluation geometry.
  d.eval_resize = "square"  # "square" (whole image; the original) or "shorter_side" (keep aspect).
  d.crop_pct = 1.0  # Central fraction kept at eval (timm-style weights use 0.875).
  # Normalization, applied on device: (x / 255 - mean) / std. Defaults: the original
  # study's Stanford Cars statistics; pretrained weights may set their own.
  d.mean = (0.470, 0.460, 0.455)
  d.std = (0.267, 0.266, 0.270)
  d.gray_mean = (0.462,)  # Used when channels == 1.
  d.gray_std = (0.270,)
  # Throughput.
  d.workers = -1  # Grain worker processes (0 = in-process; -1 = one per core, up to 16).
  d.worker_buffer_size = 2  # Batches each worker prepares ahead.
  # Threads preparing whole batches ahead in the training process when workers=0 (0: the
  # iterating thread prepares each batch when asked); use about the core count, and a
  # prefetch_buffer_size at least as large (it bounds the batches in progress too). Worker
  # processes run none: threads there only competed for the cores (and hung Grain once).
  d.read_threads = 0
  d.prefetch_buffer_size = 4  # Batches per process in progress or ready (read_threads > 0).
  return d


def _optim() -> ml_collections.ConfigDict:
  o = ml_collections.ConfigDict()
  o.lr = 1e-3  # Peak (base) learning rate of AdamW.
  o.weight_decay = 0.01  # Decoupled (AdamW) weight decay; 0.1-0.3 suits training from scratch.
  o.wd_exclude_bn_and_bias = True  # No weight decay on BatchNorm scale/shift and biases.
  o.b1 = 0.9
  o.b2 = 0.999
  o.eps = 1e-8
  o.label_smoothing = 0.1
  o.grad_clip_norm = 0.0  # Clip gradients to this global norm; 0 = no clipping.
  o.schedule = "constant"  # "constant" or "warmup_cosine" (per step; both scaled by plateau).
  o.warmup_epochs = 0.0  # warmup_cosine: linear warmup length in epochs.
  o.cosine_end_lr = 0.0  # warmup_cosine: learning rate at the last step.
  o.freeze_backbone = False  # Train only the classifier (BN statistics: model.freeze_bn).
  o.ema_decay = 0.0  # EMA of weights and BN stats, evaluated alongside; 0 = off (e.g. 0.999).
  # Layer-wise learning-rate decay: the head (head conv/BN + classifier) at the base rate,
  # each earlier group (stage by stage, then the stem) `layer_decay` times the next one's
  # (B0: 9 groups, stem at layer_decay**8). 1.0 = off. E.g. 0.8; TensorBoard: train/lr/<group>.
  o.layer_decay = 1.0
  # Sharpness-aware minimization: the gradient taken at w + rho * g / ||g|| (two forward/
  # backward passes per step; g the global gradient). 0 = off; e.g. 0.05 (adaptive: 0.5-2).
  o.sam_rho = 0.0
  o.sam_adaptive = False  # Adaptive SAM (ASAM): the perturbation scaled by |w| per parameter.

  # Reduce-on-plateau on validation loss (PyTorch ReduceLROnPlateau, mode min, rel threshold).
  o.plateau = ml_collections.ConfigDict()
  o.plateau.enabled = True
  o.plateau.factor = 0.1  # lr *= factor on a plateau.
  o.plateau.patience = 3  # Evaluations without improvement tolerated before reducing.
  o.plateau.threshold = 1e-3  # Improvement: val loss < best * (1 - threshold).
  o.plateau.cooldown = 0  # Evaluations ignored after a reduction.
  o.plateau.min_lr = 0.0  # Never reduce below this learning rate.

  # Early stopping on validation loss (Lightning EarlyStopping, mode min).
  o.early_stopping = ml_collections.ConfigDict()
  o.early_stopping.enabled = True
  o.early_stopping.patience = 10  # Stop after this many evaluations without improvement.
  o.early_stopping.min_delta = 1e-3  # Improvement: val loss < best - min_delta.
  return o


def _train() -> ml_collections.ConfigDict:
  t = ml_collections.ConfigDict()
  t.num_epochs = 150  # Upper bound; early stopping usually ends the run before.
  t.batch_size = 32  # Global batch (all devices, all hosts); a multiple of the device count.
  # Gradient accumulation: each optimizer step averages the gradients of this many
  # micro-batches of batch_size / accumulate_steps (one compiled step, a scan). BatchNorm
  # takes statistics per micro-batch; schedules, EMA and checkpoints count optimizer steps.
  # batch_size must be a multiple of accumulate_steps x the device count.
  t.accumulate_steps = 1
  t.eval_every_epochs = 1  # Validate (plateau, early stop, best checkpoint) every N epochs.
  t.log_every_steps = 50  # Console line and TensorBoard train scalars every N steps.
  t.num_sample_images = 16  # Augmented training images written to TensorBoard at the start.
  t.stop_at_step = -1  # Act as if preempted at this global step (save, exit); -1 = never.
  # With config.pretrained: "weights" takes mean/std, eval interpolation and crop_pct from
  # the weights' input convention (overriding config.data); "config" keeps config.data's.
  t.input_convention = "weights"
  return t


def _mixup() -> ml_collections.ConfigDict:
  """Mixup / CutMix inside the train step (efficientnet_jax/mixup.py): one coefficient or
  box per batch, pairs within each device's shard, label-smoothed mixed targets."""
  m = ml_collections.ConfigDict()
  m.alpha = 0.0  # Mixup: coefficient ~ Beta(alpha, alpha); 0 = no Mixup (e.g. 0.8).
  m.cutmix_alpha = 0.0  # CutMix: kept area ~ Beta(a, a); 0 = no CutMix (e.g. 1.0).
  m.prob = 1.0  # Probability that a batch is mixed.
  m.switch_prob = 0.5  # With both on: probability of CutMix instead of Mixup for a batch.
  m.off_epoch = 0.0  # Stop mixing after this many epochs; 0 = never.
  return m


def _progressive() -> ml_collections.ConfigDict:
  """Progressive learning as EfficientNetV2 trains (efficientnet_jax/progressive.py): the
  epochs split evenly into stages; the image size grows from min_image_size (first stage)
  to data.image_size (last), linearly, and each ramp goes linearly from its first to its
  last value. One compile of the train step per stage; validation and the test always at
  data.image_size; the batch size and the learning-rate schedule stay the run's."""
  p = ml_collections.ConfigDict()
  p.stages = 0  # Number of stages (<= train.num_epochs); 0 or 1 = off (V2 paper: 4).
  p.min_image_size = 128  # The first stage's training side in pixels (<= data.image_size).
  p.size_multiple = 8  # The stages in between train at sizes rounded to a multiple of this.
  # Ramps: (first stage's value, last stage's value), or () to keep the field's own value
  # in every stage. V2-S on ImageNet: dropout (0.1, 0.3), RandAugment magnitude (5, 15).
  p.dropout_rate = ()  # model.dropout_rate before the classifier.
  p.ra_magnitude = ()  # data.ra_magnitude (needs data.auto_augment="randaugment"), in [0, 10].
  p.mixup_alpha = ()  # mixup.alpha (0 = no Mixup in that stage).
  p.cutmix_alpha = ()  # mixup.cutmix_alpha (0 = no CutMix in that stage).
  return p


def _distill() -> ml_collections.ConfigDict:
  """Knowledge distillation from a frozen teacher (efficientnet_jax/distill.py)."""
  d = ml_collections.ConfigDict()
  # A finished run's workdir (its best checkpoint), converted weights, a PyTorch checkpoint
  # or a known weights name, predicting the same classes; "" = no distillation.
  d.teacher = ""
  d.teacher_ema = False  # With a workdir: the EMA weights of its best checkpoint.
  d.alpha = 0.5  # loss = (1 - alpha) * cross entropy + alpha * T^2 * KL(teacher || student).
  d.temperature = 1.0  # T: both softmaxes at logits / T.
  d.image_size = 0  # The teacher's input side (the batch is resized on device); 0 = its own.
  return d


def _checkpoint() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.every_steps = 1000  # "latest" checkpoint every N steps, and at every epoch end.
  c.keep_latest = 2  # "latest" checkpoints kept (resume after interruption).
  c.keep_best = 1  # "best" checkpoints kept, by validation top-1.
  c.async_save = True  # Write in the background; the loop waits only before exiting.
  return c


def _eval() -> ml_collections.ConfigDict:
  e = ml_collections.ConfigDict()
  e.batch_size = 64  # Global eval batch; the last batch is padded and masked.
  e.test_at_end = True  # Evaluate the best checkpoint on the test split; write results.json.
  # Test-time augmentation of validation, the final test and `evaluate`: "none", or "flip"
  # (the log of the mean softmax of each image and its mirror image; 2x the eval compute).
  e.tta = "none"
  return e


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Model initialization, dropout/drop-path, data order and augmentation.
  # Weights to start from: a converted weights directory, a PyTorch checkpoint or a known
  # name (efficientnet_jax.weights.KNOWN_WEIGHTS); "" = from scratch.
  config.pretrained = ""
  config.model = _model()
  config.data = _data()
  config.optim = _optim()
  config.train = _train()
  config.mixup = _mixup()
  config.progressive = _progressive()
  config.distill = _distill()
  config.checkpoint = _checkpoint()
  config.eval = _eval()
  # Persistent XLA compilation cache (efficientnet_jax/compile_cache.py): a repeated or
  # resumed run loads its compiled steps instead of compiling them. "user":
  # $JAX_COMPILATION_CACHE_DIR when set, else $XDG_CACHE_HOME/efficientnet_jax/xla
  # (~/.cache/...); or a folder; "" = off. evaluate, predict and the benchmarks use "user".
  config.compile_cache = "user"
  return config
