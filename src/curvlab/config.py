"""Where curvlab's Hydra configs live, in a source checkout or an installed wheel."""

from pathlib import Path

_PACKAGED = Path(__file__).resolve().parent / "conf"
_SOURCE = Path(__file__).resolve().parents[2] / "conf"
CONFIG_DIR = str(_PACKAGED if _PACKAGED.is_dir() else _SOURCE)
