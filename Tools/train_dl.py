"""Recipe of the shipped IQT-DL model ``dl_t1_x4``: train on the ICBM 2009c T1 template, evaluate on
Colin27, write the model file and its card, register it.

    python Tools/train_dl.py                    # the recipe (CPU, 1 thread, 20,000 steps, ~160 min)
    python Tools/train_dl.py --evaluate-only    # re-score the shipped file and rewrite its card

The recipe: ±40% intensity jitter, Adam 5e-4 with cosine decay over a fixed 20,000 steps, a moving
average of the weights (decay 0.999), no early stop, the held-out cubes of split seed 0 for every
seed.  Three seeds (one CPU thread each, side by side on 2 cores, ~158 min), study protocol: Colin27
NRMSE 0.0509 / 0.0506 / 0.0500 (1.8% apart), ICBM 2009a 0.0409 / 0.0410 / 0.0403 (1.7%), validation
0.224 / 0.224 / 0.216× the interpolation's loss; each still improved 1.3-1.6% over its last 20% of
steps (not converged by the 1%/20% rule).
At 14,000 steps (each seed then held out its own cubes): Colin27 0.0524 / 0.0524 / 0.0509 (2.9%
apart), ICBM 2009a 0.0431 / 0.0447 / 0.0418.  The average of the weights scores the same as the last
weights (±0.0001 on both brains, every seed) at the end of a cosine schedule; its validation curve
falls without the oscillations of the last weights', which is what the best-step selection reads.

The shipped file is the recipe's seed 0.  The file shipped before it was seed 2 of the earlier recipe,
whose cosine schedule followed an 83-min wall-clock budget (``--seed 2 --split-seed -1 --minutes 83
--steps 0 --weight-average 0 --converge``): 16,000 steps, Colin27 0.0499, ICBM 2009a 0.0405; that
recipe's seeds 0 and 1 reached 0.0519 and 0.0521.  With the cubes fixed, seeds 0 and 1 validate alike
(0.224× at 20,000 steps) and seed 2 still leads (0.216×): its lead is initialisation and data order,
not its held-out cubes.
"""
import sys

import networks
import shipping

NAME = "dl_t1_x4"
# a fixed schedule, not a wall-clock budget: the steps a budget buys depend on how busy the machine
# is (the earlier recipe's seeds ran 14,351-16,000 steps in the same 83 min); see the docstring
RECIPE_STEPS = 20_000
WEIGHT_AVERAGE = 0.999


def card(model, path):
    p = model.params
    lines = [f"- Anisotropic 3-D U-Net (`{p.get('architecture')}`): {p.get('levels')} levels on the LQ grid, "
             f"{p.get('base_filters')} base filters doubling per level, pooling 1×2×2 only; the head predicts one "
             f"channel per HQ sub-slice, the residual over linear interpolation; {p.get('parameters')} parameters."]
    return shipping.model_card(model, path, "IQT-DL (U-Net)", lines, networks.training_lines(model), networks.LIMITS)


def main(argv=None) -> int:
    args = networks.parser(__doc__.splitlines()[0], steps=RECIPE_STEPS, converge=False,
                           weight_average=WEIGHT_AVERAGE).parse_args(argv)
    return shipping.run(args, NAME, lambda a: networks.train(a, "dl", NAME), card)


if __name__ == "__main__":
    sys.exit(main())
