"""Recipe of the shipped IQT-DDL model ``ddl_t1_x4``: train on the ICBM 2009c T1 template, evaluate on
Colin27, write the model file and its card, register it.

    python Tools/train_ddl.py                   # the shipped recipe (CPU, 1 thread, to convergence)
    python Tools/train_ddl.py --evaluate-only   # re-score the shipped file and rewrite its card

Defaults: K = 64 free atoms, SRDD's compensation branch, SRDD's plain softmax (no gain: see
DeepDictionaryNet), MSE, started from the shipped IQT-DL (``--init-from``: its U-Net inside the
UNet++, its head as the softmax over the k-means atoms of the training residuals scaled into the
softmax's linear regime) and fine-tuned at Adam 1e-4 (atoms 3e-4) on a 4,000-step cosine schedule until
converged.  Trained from scratch instead (``--init-from ''``, Adam 5e-4, atoms 1.5e-3), the same recipe
flattened at 0.56× the interpolation's validation loss after 7,000 steps (Colin27 0.0646).  Started
from the shipped DL (the DL recipe's seed 0: validation 0.224×, Colin27 0.0509, ICBM 2009a 0.0409),
three seeds stopped at convergence at 2,500 steps, the earliest the rule allows, with best validation
0.223× / 0.225× / 0.229×, and scored Colin27 0.0508 / 0.0512 / 0.0512 (0.8% apart), ICBM 2009a
0.0404 / 0.0414 / 0.0412 (2.5%); seed 0 is shipped.  Under the earlier 60-minute budget, started from
earlier DLs (Colin27 0.0534 and 0.0499) it scored 0.0526 and 0.0499.
"""
import sys

import networks
import shipping
from IQTEnhanceLib.models import shipped_models_dir

NAME = "ddl_t1_x4"
# Adam's rate when starting from a trained IQT-DL (300-step probes from the shipped DL, validation
# 0.266x the interpolation's loss at the start: 1e-4 → 0.257x, the library's 5e-4 → 0.292x)
FINE_TUNE_LR = 1e-4
# The cosine schedule counts optimiser steps, not minutes, so the recipe does not depend on how busy the
# machine is; the validation loss stops it earlier once it improves < 1% over the last 20% of the steps
# (it did so at 2,500-3,000 steps under the earlier 60-minute budget).
RECIPE_STEPS = 4_000


def card(model, path):
    p = model.params
    lines = [f"- UNet++ body (`{p.get('architecture')}`, {p.get('levels')} levels, {p.get('base_filters')} base "
             f"filters, pooling 1×2×2 only) → softmax coefficients over K = {p.get('atoms')} learned HQ atoms of "
             f"{model.factor}×{p.get('atom_size')}×{p.get('atom_size')} voxels"
             + (" made by SRDD's dictionary generator" if p.get("generator") else "")
             + (", with SRDD's compensation branch (atoms shifted by half a block, fused by a 3×1×1 convolution)"
                if p.get("compensation") else "")
             + f"; the weighted atoms are the residual over linear interpolation; {p.get('parameters')} parameters.",
             f"- The atoms: `iqt-enhance models --show-dictionary {model.name} --png atoms.png`."]
    return shipping.model_card(model, path, "IQT-DDL (deep dictionary)", lines, networks.training_lines(model),
                               networks.LIMITS)


def main(argv=None) -> int:
    p = networks.parser(__doc__.splitlines()[0], steps=RECIPE_STEPS)
    p.add_argument("--atoms", type=int, default=64, choices=(64, 128))
    p.add_argument("--generator", action="store_true", help="SRDD's dictionary generator instead of free atoms")
    p.add_argument("--no-compensation", action="store_true")
    p.add_argument("--atom-init", choices=("random", "kmeans"), default="kmeans")
    p.add_argument("--dictionary-lr", type=float, default=None, help="the atoms' learning rate (default: 3× lr)")
    p.add_argument("--init-from", default=str(shipped_models_dir() / "dl_t1_x4.iqtm"),
                   help="IQT-DL model file to start from (default: the shipped one; '' for a fresh start)")
    args = p.parse_args(argv)
    if args.init_from and args.lr is None:
        args.lr = FINE_TUNE_LR

    def train(a):
        return networks.train(a, "ddl", NAME, atoms=a.atoms, generator=a.generator,
                              compensation=not a.no_compensation,
                              atom_init="random" if a.generator else a.atom_init,
                              dictionary_lr=a.dictionary_lr or 3 * networks.learning_rate(a, "ddl"),
                              init_from=a.init_from)

    return shipping.run(args, NAME, train, card)


if __name__ == "__main__":
    sys.exit(main())
