"""White-box adversarial attacks on the query images of every DATASETS.TEST entry: clean vs attacked R1/mAP/mINP.

    python tools/attack.py --config lfm_market.yml --weights output/lfm_market/best.pth --attack pgd --eps 2 4 8
    python tools/attack.py --weights best.pth --attack fgsm mifgsm --eps 4 --objective both --vis 5 OUTPUT_DIR out/adv

The perturbation is bounded by eps/255 per pixel (L-inf) and applied to the [0, 1] image before the model's
normalisation. Settings not given on the command line come from TEST.ATTACK.*; without --config, the config
stored in the checkpoint is used. Results go to OUTPUT_DIR/results.json (clean metrics per dataset, attacks
under "attacks"), triptychs (--vis) to OUTPUT_DIR/attacks/<dataset>/. Features are computed in float32 on
every device, and adversarial images are rounded to 8 bits inside the eps ball before they are evaluated,
so --save-adv writes exactly the images the reported numbers come from.
"""

from __future__ import annotations

import argparse

from reid.experiments.attack import DEFAULT_TRIPTYCHS, attack
from reid.engine.testing import config_and_weights
from reid.evaluation.attacks import ATTACKS, BOTH_OBJECTIVES, OBJECTIVES, objectives_of
from reid.utils.cli import add_config_arguments, parse_args, parser_from_docstring, run_cli


def _split_off_overrides(values: list[str] | None, opts: list[str]) -> list[str] | None:
    """A multi-value option swallows the KEY VALUE overrides after it (argparse cannot tell them apart):
    the first word in capitals (a config key such as DATASETS.ROOT) and what follows go back to the overrides."""
    if values is None:
        return None
    count = next((i for i, word in enumerate(values) if word.isupper()), len(values))
    opts[:0] = values[count:]
    return values[:count]


def _budgets(words: list[str], parser: argparse.ArgumentParser) -> list[float]:
    try:
        return [float(word) for word in words]
    except ValueError:
        parser.error(f"--eps takes numbers (budgets in 1/255 units), got {' '.join(words)}")


def main(argv: list[str] | None = None) -> None:
    parser = add_config_arguments(parser_from_docstring(__doc__))
    parser.add_argument("--weights", "-w", default=None, help="checkpoint (default: TEST.WEIGHTS, OUTPUT_DIR/best.pth)")
    parser.add_argument("--attack", nargs="+", metavar="NAME",
                        help=f"one or more of {', '.join(ATTACKS)} (default: TEST.ATTACK.NAME)")
    parser.add_argument("--eps", nargs="+", metavar="E", help="whole budgets in 1/255 units (default: TEST.ATTACK.EPS)")
    parser.add_argument("--steps", type=int, default=None,
                        help="iterations of ifgsm/mifgsm/pgd (default: TEST.ATTACK.STEPS)")
    parser.add_argument("--objective", choices=(*OBJECTIVES, BOTH_OBJECTIVES), default=None,
                        help="feature: away from the clean feature; metric: away from the true gallery matches "
                             "(default: TEST.ATTACK.OBJECTIVE)")
    parser.add_argument("--vis", type=int, default=DEFAULT_TRIPTYCHS, metavar="N",
                        help="save clean/adversarial/difference pictures of the first N queries per setting "
                             f"(default {DEFAULT_TRIPTYCHS}; 0: none)")
    parser.add_argument("--save-adv", default=None, metavar="DIR",
                        help="write each attacked query set as DIR/<attack>_<objective>_eps<E>/<dataset folder>/ "
                             "(PNG queries, links to the clean gallery): use it as DATASETS.ROOT with tools/test.py")
    args = parse_args(parser, argv)
    eps = _split_off_overrides(args.eps, args.opts)  # only the last option on the line can have swallowed any
    attacks = _split_off_overrides(args.attack, args.opts)
    cfg, weights = config_and_weights(args.config, args.weights, args.opts)
    attacks = attacks or ([cfg.TEST.ATTACK.NAME] if cfg.TEST.ATTACK.NAME else [])
    if not attacks:
        parser.error(f"name an attack with --attack ({', '.join(ATTACKS)}) or TEST.ATTACK.NAME")
    objective = args.objective or cfg.TEST.ATTACK.OBJECTIVE
    attack(cfg, weights, attacks,
           eps_list=_budgets(eps, parser) if eps else list(cfg.TEST.ATTACK.EPS),
           objectives=objectives_of(objective),
           steps=cfg.TEST.ATTACK.STEPS if args.steps is None else args.steps,
           vis=args.vis, save_adv=args.save_adv)


def entry() -> None:
    """The ``reid-attack`` console script."""
    run_cli(main)
