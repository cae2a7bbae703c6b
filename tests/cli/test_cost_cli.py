"""``curvlab-cost`` prints the guide's ViT cost model and refuses bad input in one paragraph."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from curvlab.cli.cost import main
from curvlab.models.cost import vit_cost

# Section 4.7's image and ViT (D=192, h=3) at ViT-Ti's depth and class count.
GUIDE_ARGS = [
    "--image-size",
    "224",
    "--channels",
    "3",
    "--classes",
    "1000",
    "model.embed_dim=192",
    "model.num_heads=3",
    "model.depth=12",
]
ROW = re.compile(r"^ {2,}(\S.*?)\s{2,}(\S.*?)(?:\s{2,}(.*))?$")


def _run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    monkeypatch.setattr(sys, "argv", ["curvlab-cost", *args])
    main()
    return capsys.readouterr().out


def _rows(out: str) -> dict[str, str]:
    """The table as label -> value."""
    return {m.group(1).strip(): m.group(2) for line in out.splitlines() if (m := ROW.match(line))}


def _refusal(monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", ["curvlab-cost", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    # sys.exit(message): exit status 1, the message goes to stderr.
    assert isinstance(exit_info.value.code, str)
    return exit_info.value.code


def test_reproduces_section_4_7(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _rows(_run(monkeypatch, capsys, *GUIDE_ARGS, "model.patch_size=16"))

    assert rows["patch tokens N_patch"] == "196"
    assert rows["tokens N"] == "197"
    assert rows["head dim d_h"] == "64"
    assert rows["attention entries/layer"] == "116,427"
    assert rows["attention entries"] == "1,397,124"
    assert rows["MLP width D_MLP"] == "768"
    assert rows["parameters"] == "5,717,416"
    assert rows["forward FLOPs/image"] == "2,507,366,400"
    assert rows["attention"] == "357,663,744"
    assert rows["projections"] == "755,358,720"
    assert rows["MLP"] == "1,394,343,936"


def test_smaller_patches_give_785_tokens(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _rows(_run(monkeypatch, capsys, *GUIDE_ARGS, "model.patch_size=8"))
    assert rows["tokens N"] == "785"
    assert rows["attention entries/layer"] == "1,848,675"


def test_defaults_to_the_vit_on_the_digits(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _run(monkeypatch, capsys)
    rows = _rows(out)

    # conf/model/vit.yaml on 8x8x1 digits with 10 classes; batch 64 at 32-true.
    assert "model=vit" in out.splitlines()[0]
    assert rows["image H x W x C"] == "8 x 8 x 1"
    assert rows["tokens N"] == "17"
    assert rows["head dim d_h"] == "16"
    assert rows["parameters"] == "202,186"
    expected = vit_cost(
        height=8, width=8, channels=1, patch_size=2, embed_dim=64, depth=4, num_heads=4,
        mlp_ratio=4.0, num_classes=10, attention="sdpa", batch_size=64,
    )  # fmt: skip
    assert rows["activation memory"] == f"{expected.activation_bytes:,} B"


def test_batch_and_precision_come_from_the_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("data.batch_size=8", "trainer.precision=bf16-mixed", "model.attention=math")
    out = _run(monkeypatch, capsys, *args)
    expected = vit_cost(
        height=8, width=8, channels=1, patch_size=2, embed_dim=64, depth=4, num_heads=4,
        mlp_ratio=4.0, num_classes=10, attention="math", batch_size=8, precision="bf16-mixed",
    )  # fmt: skip
    assert _rows(out)["activation memory"] == f"{expected.activation_bytes:,} B"
    assert "batch 8 at bf16-mixed (2 B/element)" in out


def test_refuses_heads_that_do_not_divide_d(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    message = _refusal(monkeypatch, "model.embed_dim=100", "model.num_heads=3")
    assert "model.embed_dim=100" in message and "model.num_heads=3" in message
    assert "\n" not in message
    assert capsys.readouterr().out == ""


def test_refuses_the_mlp(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refusal(monkeypatch, "model=mlp")
    assert "model=mlp is not a Vision Transformer" in message


def test_unknown_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refusal(monkeypatch, "model.heads=3")
    assert message.startswith("curvlab-cost: config key model.heads:")


def test_help_says_how_to_reproduce_section_4_7(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["curvlab-cost", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "section 4.7" in out
    assert "--image-size 224 --channels 3 --classes 1000" in out
    assert "model.patch_size=16 model.embed_dim=192 model.num_heads=3" in out


@pytest.mark.slow
def test_error_exits_non_zero_without_traceback() -> None:
    # The real process, as a user sees it; slow because torch and timm import afresh.
    result = subprocess.run(
        [sys.executable, "-m", "curvlab.cli.cost", "model.embed_dim=100", "model.num_heads=3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("curvlab-cost: model.embed_dim=100 is not divisible")
    assert "Traceback" not in result.stderr
