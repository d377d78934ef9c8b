"""Recipe of the shipped IQT-DL model ``dl_t1_x4``: train on the ICBM 2009c T1 template, evaluate on
Colin27, write the model file and its card, register it.

    python Tools/train_dl.py                    # the shipped recipe (CPU, 1 thread, to convergence)
    python Tools/train_dl.py --evaluate-only    # re-score the shipped file and rewrite its card

Seeds of this recipe (one CPU thread each, 83-min budget, ±40% intensity jitter, Adam 5e-4), Colin27
NRMSE under the study's protocol: seed 0 stopped at convergence after 9,500 steps (58% of its cosine
schedule) at 0.0534, seed 1 after 11,000 (72%) at 0.0528; seed 2 met the rule only at the end of the
budget, 16,000 steps, 0.0499 (shipped).  Resumed to the end of their schedules (``--resume
--no-converge``), seeds 0 and 1 reach 0.0519 and 0.0521: stopping on a noisy validation curve cost
~3%, and the seeds still differ by 4.4%.
"""
import sys

import networks
import shipping

NAME = "dl_t1_x4"
# a fixed schedule (not a wall-clock budget, whose steps depend on how busy the machine is) and a
# moving average of the weights; see the docstring for the seeds
RECIPE_STEPS = 14_000
WEIGHT_AVERAGE = 0.999


def card(model, path):
    p = model.params
    lines = [f"- Anisotropic 3-D U-Net (`{p.get('architecture')}`): {p.get('levels')} levels on the LQ grid, "
             f"{p.get('base_filters')} base filters doubling per level, pooling 1×2×2 only; the head predicts one "
             f"channel per HQ sub-slice, the residual over linear interpolation; {p.get('parameters')} parameters."]
    return shipping.model_card(model, path, "IQT-DL (U-Net)", lines, networks.training_lines(model), networks.LIMITS)


def main(argv=None) -> int:
    args = networks.parser(__doc__.splitlines()[0], minutes=0.0, steps=RECIPE_STEPS, converge=False,
                           weight_average=WEIGHT_AVERAGE).parse_args(argv)
    return shipping.run(args, NAME, lambda a: networks.train(a, "dl", NAME), card)


if __name__ == "__main__":
    sys.exit(main())
