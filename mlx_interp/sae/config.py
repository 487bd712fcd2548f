"""The SAE configuration, and its translation to and from SAELens's ``cfg.json``.

One dataclass describes an SAE in both backends. The file format is SAELens 6's: a flat
object with ``architecture``, ``d_in``, ``d_sae``, ``dtype``, ``device``,
``apply_b_dec_to_input``, ``normalize_activations``, ``reshape_activations``, ``k`` (TopK)
and a nested ``metadata`` object holding ``hook_name``, ``model_name`` and the rest.
Older (pre-6) flat files with ``hook_point`` / ``activation_fn_str`` are read too.

A transcoder (``d_out`` set) reads one hook (``hook_name``) and predicts another
(``hook_name_out``, in the metadata, as SAELens keeps it); a skip transcoder adds ``x @ W_skip.T``.
SAELens 6.54 names them ``transcoder`` / ``skip_transcoder`` (ReLU) and ``jumprelu_transcoder`` /
``jumprelu_skip_transcoder``; it has no TopK transcoder, so ours is written as
``topk_transcoder`` / ``topk_skip_transcoder``, which this package reads and SAELens refuses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu", "matryoshka_batchtopk")
# trained with a batch-wide top-k, run (and saved, as JumpReLU) with one global threshold
BATCH_TOPK = ("batchtopk", "matryoshka_batchtopk")

# The SAELens version whose file layout we write; SAELens reads the nested-metadata
# layout only when metadata.sae_lens_version is at least 6.0.0.
SAELENS_FORMAT_VERSION = "6.0.0"

# SAELens's transcoder architecture names: (our activation, skip) -> name. BatchTopK runs as
# JumpReLU at inference (one global threshold), as for SAEs.
TRANSCODER_NAMES = {
    ("standard", False): "transcoder",
    ("standard", True): "skip_transcoder",
    ("jumprelu", False): "jumprelu_transcoder",
    ("jumprelu", True): "jumprelu_skip_transcoder",
    ("topk", False): "topk_transcoder",  # not in SAELens 6.54
    ("topk", True): "topk_skip_transcoder",
}


@dataclass
class SAEConfig:
    """What an SAE is: sizes, architecture, the hook point it reads, and k or threshold.

    ``architecture`` is one of ``standard`` (ReLU), ``topk``, ``batchtopk`` (trained with a
    batch-wide top-k, run with one global ``threshold``) and ``jumprelu`` (a threshold per
    latent, held in the weights). ``matryoshka_batchtopk`` (Bussmann et al. 2025) is a
    BatchTopK SAE whose nested prefixes ``matryoshka_widths`` (increasing, the last d_sae)
    were each trained to reconstruct; it runs as BatchTopK. Saved files are always in the
    units of the hook's raw activations: input normalisation used in training is folded in.

    A transcoder has ``d_out`` (the width of ``hook_name_out``, the hook it predicts; b_dec
    and W_dec are in that space, and b_dec is never subtracted from the input); ``skip`` adds
    a linear skip term ``x @ W_skip.T`` (W_skip (d_out, d_in), as SAELens's SkipTranscoder).
    """

    d_in: int
    d_sae: int
    architecture: str = "topk"
    hook_name: str | None = None
    model_name: str | None = None
    k: int | None = None
    threshold: float | None = None  # batchtopk: the global inference threshold
    apply_b_dec_to_input: bool = True
    dtype: str = "float32"
    metadata: dict = field(default_factory=dict)
    d_out: int | None = None  # transcoders: the width of hook_name_out
    hook_name_out: str | None = None
    skip: bool = False  # skip transcoder: + x @ W_skip.T
    matryoshka_widths: list[int] | None = None  # matryoshka_batchtopk: the prefix widths

    @property
    def is_transcoder(self) -> bool:
        return self.d_out is not None

    @property
    def out_width(self) -> int:
        """The width of what the SAE reconstructs (d_in) or the transcoder predicts (d_out)."""
        return self.d_in if self.d_out is None else self.d_out

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown SAE architecture {self.architecture!r}; expected one of {', '.join(ARCHITECTURES)}"
            )
        from ..checks import integer, number

        self.d_in = integer("d_in", self.d_in)
        self.d_sae = integer("d_sae", self.d_sae)
        if self.architecture in ("topk", *BATCH_TOPK):
            if self.k is None:
                raise ValueError(f"a {self.architecture} SAE needs k")
            self.k = integer("k", self.k)
            if self.k > self.d_sae:
                raise ValueError(f"k={self.k} must be between 1 and d_sae={self.d_sae}")
        if self.threshold is not None:
            self.threshold = number("threshold", self.threshold, low=0)
        if self.architecture == "matryoshka_batchtopk":
            self.matryoshka_widths = matryoshka_widths(self.matryoshka_widths, self.d_sae)
        elif self.matryoshka_widths is not None:
            raise ValueError("matryoshka_widths is for the matryoshka_batchtopk architecture")
        if self.dtype not in ("float32", "float16", "bfloat16", "float64"):
            raise ValueError(f"dtype {self.dtype!r} is not supported (float32, float16, bfloat16)")
        if self.d_out is not None:
            self.d_out = integer("d_out", self.d_out)
            # b_dec lives in the output space: it cannot be taken from the input
            self.apply_b_dec_to_input = False
        elif self.skip or self.hook_name_out is not None:
            raise ValueError("skip and hook_name_out are for transcoders: give d_out too")
        for key in ("hook_name", "model_name", "hook_name_out"):
            v = getattr(self, key)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"{key} must be a string, got {v!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    # --- SAELens cfg.json -------------------------------------------------------------

    def to_saelens(self) -> dict:
        """The cfg.json SAELens 6 reads with ``SAE.load_from_disk``.

        A BatchTopK or Matryoshka BatchTopK SAE is written, as SAELens 6.54 writes both, as a
        JumpReLU SAE whose thresholds all equal the global threshold, with what it was
        trained as in the metadata: SAELens's ``training_architecture`` and
        ``training_architecture_details`` (k, matryoshka_widths), and our k and threshold.
        """
        arch = "jumprelu" if self.architecture in BATCH_TOPK else self.architecture
        if self.is_transcoder:
            arch = TRANSCODER_NAMES[(arch, self.skip)]
        cfg = {
            "architecture": arch,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": self.dtype,
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
            "reshape_activations": "none",
        }
        if arch == "topk":
            cfg["k"] = self.k
            cfg["rescale_acts_by_decoder_norm"] = False
        if self.is_transcoder:
            cfg["d_out"] = self.d_out
            if self.architecture == "topk":
                cfg["k"] = self.k
        meta = {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "sae_lens_training_version": SAELENS_FORMAT_VERSION,
            "model_name": self.model_name,
            "hook_name": self.hook_name,
            "hook_head_index": None,
            "prepend_bos": True,
            **({"hook_name_out": self.hook_name_out} if self.is_transcoder else {}),
            **self.metadata,
            "trained_with": "mlx-interp",
            "trained_architecture": self.architecture,
        }
        if self.architecture in BATCH_TOPK:
            meta["k"] = self.k
            meta["threshold"] = self.threshold
            details = {"k": self.k, "rescale_acts_by_decoder_norm": False}
            if self.matryoshka_widths is not None:
                details["matryoshka_widths"] = list(self.matryoshka_widths)
            meta["training_architecture"] = self.architecture
            meta["training_architecture_details"] = details
        cfg["metadata"] = meta
        return cfg

    @classmethod
    def from_saelens(cls, cfg: dict) -> SAEConfig:
        """Read a SAELens cfg.json (6.x nested metadata, or the older flat layout)."""
        meta = dict(cfg.get("metadata") or {})
        flat = {**cfg, **meta}
        hook = flat.get("hook_name", flat.get("hook_point"))
        arch = cfg.get("architecture")
        k = cfg.get("k")
        transcoder = {name: key for key, name in TRANSCODER_NAMES.items()}.get(arch)
        d_out = skip = None
        if transcoder is not None:
            if "d_out" not in cfg:
                raise ValueError(f"cfg.json of a {arch} has no 'd_out'")
            (arch, skip), d_out = transcoder, cfg["d_out"]
        if arch is None:  # pre-6: the activation function decides
            act = flat.get("activation_fn_str", flat.get("activation_fn", "relu"))
            kwargs = flat.get("activation_fn_kwargs") or {}
            arch = "topk" if act == "topk" else "standard"
            k = kwargs.get("k", k)
        for key in ("d_in", "d_sae"):
            if key not in cfg:
                raise ValueError(f"cfg.json has no {key!r}")
        norm = cfg.get("normalize_activations", "none")
        if norm in (None, False, True):
            norm = "expected_average_only_in" if norm else "none"
        if norm not in ("none", "expected_average_only_in"):
            # SAELens applies "expected_average_only_in" only through a scaling factor it
            # folds in when loading; the others change the forward pass.
            raise ValueError(f"normalize_activations={norm!r} is not supported (only 'none')")
        if cfg.get("reshape_activations", "none") != "none":
            raise ValueError("reshape_activations (hook_z SAEs) is not supported")
        if cfg.get("rescale_acts_by_decoder_norm") and arch not in ("topk", *BATCH_TOPK):
            # SAELens has the option for the TopK family only; load_sae_folder folds it in
            raise ValueError(f"rescale_acts_by_decoder_norm=true is not supported for {arch}")
        known = {
            "sae_lens_version",
            "sae_lens_training_version",
            "model_name",
            "hook_name",
            "hook_head_index",
            "prepend_bos",
            "trained_with",
            "trained_architecture",
            "k",
            "threshold",
            "hook_name_out",
        }
        extra = {k2: v for k2, v in meta.items() if k2 not in known}
        threshold = widths = None
        # a JumpReLU file that was trained as (Matryoshka) BatchTopK: ours say so in
        # trained_architecture, SAELens 6.54's in training_architecture(_details)
        trained = meta.get("trained_architecture") or meta.get("training_architecture")
        details = meta.get("training_architecture_details") or {}
        if arch == "jumprelu" and trained in BATCH_TOPK:
            arch, k, threshold = trained, meta.get("k", details.get("k")), meta.get("threshold")
        if arch == "matryoshka_batchtopk":  # SAELens's training files hold the widths on top
            widths = cfg.get("matryoshka_widths", details.get("matryoshka_widths"))
        if arch not in ARCHITECTURES:
            raise ValueError(f"SAE architecture {arch!r} is not supported")
        return cls(
            d_in=cfg["d_in"],
            d_sae=cfg["d_sae"],
            architecture=arch,
            hook_name=hook,
            model_name=flat.get("model_name"),
            k=k,
            threshold=threshold,
            apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
            dtype=str(cfg.get("dtype", "float32")).replace("torch.", ""),
            metadata=extra,
            d_out=d_out,
            hook_name_out=flat.get("hook_name_out") if d_out is not None else None,
            skip=bool(skip),
            matryoshka_widths=widths,
        )


def default_matryoshka_widths(d_sae: int) -> list[int]:
    """Geometric prefixes, x4 from min(128, d_sae // 16) while a prefix is at most half of
    d_sae, then d_sae: 128, 512, 2048, 9216 for 9216 latents; 4, 16, 64 for 64."""
    widths, w = [], max(1, min(128, d_sae // 16))
    while 2 * w <= d_sae:
        widths.append(w)
        w *= 4
    return [*widths, d_sae]


def parse_matryoshka_widths(widths) -> list[int]:
    """Matryoshka prefix widths from a list or a "128,512,2048" string: positive integers,
    strictly increasing (one-line ValueError otherwise)."""
    from ..checks import integer

    if isinstance(widths, str):
        try:
            widths = [int(w) for w in widths.replace(" ", "").split(",") if w]
        except ValueError:
            raise ValueError(
                f"matryoshka_widths must be comma-separated integers like 128,512,2048, got {widths!r}"
            ) from None
    if not isinstance(widths, (list, tuple)) or not widths:
        raise ValueError(f"matryoshka_widths must be a non-empty list of integers, got {widths!r}")
    out = [integer("matryoshka_widths", w) for w in widths]
    if any(b <= a for a, b in zip(out, out[1:], strict=False)):
        raise ValueError(f"matryoshka_widths must increase strictly, got {','.join(map(str, out))}")
    return out


def matryoshka_widths(widths, d_sae: int) -> list[int]:
    """The prefix widths of a Matryoshka SAE of ``d_sae`` latents: None gives the default;
    given ones (``parse_matryoshka_widths``) must be at most d_sae, and d_sae is appended when
    missing (as SAELens does), since the whole dictionary is the last prefix."""
    if widths is None:
        return default_matryoshka_widths(d_sae)
    out = parse_matryoshka_widths(widths)
    if out[-1] > d_sae:
        raise ValueError(
            f"matryoshka_widths {','.join(map(str, out))} go past d_sae={d_sae}; each must be "
            "at most d_sae"
        )
    return out if out[-1] == d_sae else [*out, d_sae]


def trained_on(cfg) -> dict | None:
    """What an SAE was trained on, from its cfg.json (``DataSource.record()``'s keys), or
    None for an SAE folder that does not say (trained elsewhere, or before this was kept)."""
    meta = cfg.metadata or {}
    if not meta.get("dataset_fingerprint"):
        return None
    return {
        "data": meta.get("dataset_path"),
        "split": meta.get("dataset_split"),
        "fingerprint": meta["dataset_fingerprint"],
    }


def weight_names(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """The tensors of a SAELens file for this config, with their shapes."""
    d_out = cfg.out_width
    shapes = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, d_out),
        "b_dec": (d_out,),
    }
    if cfg.skip:
        shapes["W_skip"] = (d_out, cfg.d_in)
    if cfg.architecture in ("jumprelu", *BATCH_TOPK):
        shapes["threshold"] = (cfg.d_sae,)
    return shapes


def model_identity(name) -> str:
    """A model name compared across commands: embedded aliases lower-cased, paths that exist
    resolved (so ``./m`` and ``/abs/m`` are the same model), anything else as given."""
    import os
    from pathlib import Path

    text = os.fspath(name)
    p = Path(text).expanduser()
    if p.exists():
        return str(p.resolve())
    return text.lower() if "/" not in text else text


def check_sae_for_model(
    sae_cfg: SAEConfig, model, hook: str | None = None, model_name: str | None = None,
    force: bool = False,
) -> str:  # fmt: skip
    """The hook to read; one-line errors for an SAE of another hook or model (``force``
    skips these two) or of another width (never skipped)."""
    hook = hook or sae_cfg.hook_name
    if hook is None:
        raise ValueError("the SAE's cfg.json names no hook point; give --hook")
    model.check_hook_name(hook)
    if not force and sae_cfg.hook_name and hook != sae_cfg.hook_name:
        raise ValueError(
            f"the SAE was trained on {sae_cfg.hook_name}, not {hook}; drop --hook, give the SAE "
            "of that hook, or pass --force to use it anyway"
        )
    name = model_name if model_name is not None else getattr(model, "source", None)
    if not force and sae_cfg.model_name and name:
        if model_identity(sae_cfg.model_name) != model_identity(name):
            raise ValueError(
                f"the SAE was trained on model {sae_cfg.model_name!r}, not {str(name)!r}; load "
                "that model, or pass --force if it is the same model under another name"
            )
    return hook
