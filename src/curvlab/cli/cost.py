"""``curvlab-cost``: print the guide's ViT cost model (chapter 4) for a training config.

Examples:
    curvlab-cost
    curvlab-cost model.patch_size=1 data.batch_size=256 trainer.precision=bf16-mixed
    curvlab-cost --image-size 224 --channels 3 --classes 1000 \\
        model.patch_size=16 model.embed_dim=192 model.num_heads=3 model.depth=12
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from curvlab.config import CONFIG_DIR
from curvlab.models.cost import ViTCost, attention_impl, cost_of, count_parameters
from curvlab.models.vit import ViT

_EPILOG = """\
overrides are the training config's (see curvlab-train --help); the model defaults to
model=vit here. The batch size is data.batch_size and the precision trainer.precision, so
data.batch_size=256 trainer.precision=bf16-mixed change the activation memory. The image
shape and class count come from the data config unless given as options; with all three
options no data is loaded.

guide section 4.7 (224x224 RGB image, P=16, D=192, h=3: 197 tokens, d_h=64, 116,427
attention entries per layer; depth 12 and 1000 classes make it ViT-Ti):
  curvlab-cost --image-size 224 --channels 3 --classes 1000 \\
      model.patch_size=16 model.embed_dim=192 model.num_heads=3 model.depth=12
and with model.patch_size=8 instead: 785 tokens, 1,848,675 entries per layer.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="curvlab-cost",
        description=(
            "Print the guide's Vision Transformer cost model (chapter 4): tokens, head dim,\n"
            "attention entries, MLP width, the exact parameter count of the built model,\n"
            "forward FLOPs per image (attention, projections, MLP) and the activation memory\n"
            "autograd keeps for one training step."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--image-size", type=int, metavar="S", help="H = W in pixels (default: the data's)"
    )
    parser.add_argument(
        "--channels", type=int, metavar="C", help="C, image channels (default: the data's)"
    )
    parser.add_argument(
        "--classes", type=int, metavar="K", help="K, head width (default: the task's)"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.depth=12")
    return parser


def _with_vit_default(overrides: list[str]) -> list[str]:
    # The training config defaults to the MLP; the cost model describes the ViT.
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    return overrides if "model" in keys else ["model=vit", *overrides]


def _data_shape(cfg: DictConfig, args: argparse.Namespace) -> tuple[tuple[int, int, int], int]:
    if None not in (args.image_size, args.channels, args.classes):
        return (args.channels, args.image_size, args.image_size), args.classes

    # Load the data only for what the options leave open, as training would read it.
    try:
        datamodule = instantiate(cfg.data)
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(
            f"could not load the data config to read the image shape and classes: "
            f"{_message(err).rstrip('.')}. Give --image-size, --channels and --classes to "
            "skip the data."
        ) from err
    C, H, W = datamodule.input_shape
    K = instantiate(cfg.task).setup(datamodule)
    if args.image_size is not None:
        H = W = args.image_size
    return (args.channels or C, H, W), args.classes if args.classes is not None else K


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        # The hydra node is kept (unresolved) to read the chosen model's name.
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


@dataclass(frozen=True)
class _Report:
    model_name: str
    model: ViT
    cost: ViTCost
    params: int
    precision: str


def _report(args: argparse.Namespace) -> _Report:
    cfg = _compose(_with_vit_default(args.overrides))
    model_name = str(cfg.hydra.runtime.choices.get("model"))
    if not _is_vit(cfg.model):
        raise ValueError(
            f"model={model_name} is not a Vision Transformer; curvlab-cost describes the "
            "guide's ViT cost model (tokens, heads, attention) and has nothing to say about "
            "it. Use model=vit (the default here) with its model.* settings."
        )
    input_shape, K = _data_shape(cfg, args)

    # On the meta device the model has exact parameter shapes but no memory or init cost.
    with torch.device("meta"):
        model = instantiate(cfg.model, input_shape=input_shape, num_outputs=K)
    precision = str(cfg.trainer.precision)
    cost = cost_of(model, int(cfg.data.batch_size), precision)
    return _Report(model_name, model, cost, count_parameters(model), precision)


def _is_vit(model_cfg: DictConfig) -> bool:
    target = str(model_cfg.get("_target_", ""))
    return target.rsplit(".", 1)[-1] == ViT.__name__


def _message(err: BaseException) -> str:
    cause = err.__cause__
    if isinstance(err, InstantiationException) and cause is not None:
        # Hydra wraps the constructor's error; curvlab's ValueErrors already name the key.
        if isinstance(cause, ValueError):
            return _message(cause)
        target = str(err).splitlines()[0].rstrip(":")
        return f"{target}: {cause}"
    text = " ".join(str(err).split())
    if not isinstance(err, (HydraException, OmegaConfBaseException)):
        return text

    # Composition errors keep the offending key on the OmegaConf error underneath.
    if cause is not None:
        text = f"{text} ({' '.join(str(cause).split())})"
    key = getattr(err, "full_key", None) or getattr(cause, "full_key", None)
    return f"config key {key}: {text}" if key else text


def _table(report: _Report) -> str:
    model, cost, params = report.model, report.cost, report.params
    C, H, W = model.input_shape
    flops = cost.flops_forward
    rows = [
        ("image H x W x C", f"{H} x {W} x {C}", ""),
        ("patch size P", f"{model.patch_size}", ""),
        ("embedding D", f"{model.embed_dim}", ""),
        ("depth L", f"{model.depth}", ""),
        ("heads h", f"{model.num_heads}", ""),
        ("MLP ratio r", f"{model.mlp_ratio:g}", ""),
        ("classes K", f"{model.num_outputs}", ""),
        ("class token", "yes" if model.class_token else "no (mean of tokens)", ""),
        ("attention kernel", attention_impl(model), ""),
        None,
        ("patch tokens N_patch", f"{cost.patch_tokens:,}", "(H/P)(W/P), eq. 4.1"),
        ("tokens N", f"{cost.tokens:,}", "eq. 4.2"),
        ("attention modules", f"{cost.attention_modules:,}", "= L, eq. 4.3"),
        ("head dim d_h", f"{cost.head_dim:,}", "D/h, eq. 4.4"),
        ("attention entries/layer", f"{cost.attention_entries_per_layer:,}", "h*N^2, eq. 4.6"),
        ("attention entries", f"{cost.attention_entries:,}", "L*h*N^2, all layers"),
        ("MLP width D_MLP", f"{cost.mlp_width:,}", "r*D, eq. 4.8"),
        ("parameters", f"{params:,}", _params_note(params, cost.params)),
        ("forward FLOPs/image", f"{flops:,}", f"{_si(flops)}FLOP, a multiply-add is 2"),
        ("  attention", f"{cost.flops_attention:,}", _share(cost.flops_attention, flops)),
        ("  projections", f"{cost.flops_projections:,}", _share(cost.flops_projections, flops)),
        ("  MLP", f"{cost.flops_mlp:,}", _share(cost.flops_mlp, flops)),
        (
            "activation memory",
            f"{cost.activation_bytes:,} B",
            f"{_si(cost.activation_bytes)}B for batch {cost.batch_size} at {report.precision} "
            f"({cost.bytes_per_element} B/element)",
        ),
    ]

    # Labels left-aligned, values right-aligned so that digits line up.
    label_w = max(len(row[0]) for row in rows if row)
    value_w = max(len(row[1]) for row in rows if row)
    lines = [f"ViT cost model (guide chapter 4), model={report.model_name}"]
    for row in rows:
        line = "" if row is None else f"  {row[0]:<{label_w}}  {row[1]:>{value_w}}  {row[2]}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def _si(value: int) -> str:
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}"
    return f"{value} "


def _share(part: int, total: int) -> str:
    return f"{100 * part / total:.1f}%" if total else ""


def _params_note(counted: int, closed_form: int) -> str:
    if counted == closed_form:
        return "counted on the built model; the closed form agrees"
    return f"counted on the built model; the closed form says {closed_form:,}"


def main() -> None:
    """Console entry point: ``curvlab-cost [--image-size S] [--channels C] [--classes K] ...``."""
    args = _parser().parse_intermixed_args(sys.argv[1:])
    try:
        report = _report(args)
    except (ValueError, HydraException, OmegaConfBaseException) as err:
        # One clear paragraph instead of a traceback: the input was wrong, not curvlab.
        sys.exit(f"curvlab-cost: {_message(err)}")
    print(_table(report))


if __name__ == "__main__":
    main()
