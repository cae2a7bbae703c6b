"""curvlab-explain: print one of the guide's worked examples, step by step.

    curvlab-explain                              # worked example III (Tables 3.1-3.3)
    curvlab-explain example=vector_3_5           # sections 3.5-3.6, gradient w.r.t. the input
    curvlab-explain example.x=3.0 example.lr=0.5 # the same network on another input and step

The examples are the files of ``curvlab/guide/conf/example``; every value in them can be
overridden.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from curvlab.guide import GUIDE_CONFIG_DIR, format_walkthrough, run_example


@hydra.main(version_base="1.3", config_path=GUIDE_CONFIG_DIR, config_name="explain")
def main(cfg: DictConfig) -> None:
    """Compute the selected example, then print its table and the cross-check line."""
    example = OmegaConf.to_container(cfg.example, resolve=True)
    try:
        walkthrough = run_example(example)
    except ValueError as err:
        # A network and input that do not fit together: say which key, not a traceback.
        sys.exit(f"curvlab-explain: {err}")
    print(format_walkthrough(walkthrough))


if __name__ == "__main__":
    main()
