"""The model zoo: ``linear`` and ``srep`` models for T1 and T2 at ×2 to ×6, beside the default T1 ×4
models, so that ``--model auto`` finds one whose factor matches a scan's spacing and whose contrast
the user chose (``--contrast t1|t2``).  Same recipes as ``train_linear.py`` and ``train_srep.py``; T1 on
the ICBM 2009c T1 template, T2 on the ICBM 2009c T2 template.  Each model gets a card and a manifest
entry (not the method's default: the T1 ×4 models stay the defaults).

    python Tools/train_zoo.py                                   # every missing zoo model
    python Tools/train_zoo.py --methods linear --factors 2 3    # some of them
    python Tools/train_zoo.py --retrain                         # also those already shipped

Evaluation: T1 models on Colin27 T1 at their factor (held out).  T2 models on the T2 template with another
noise draw (in sample: no other T2 brain installs offline, the card says so) and on Colin27 T1 (held out,
across the contrast change).
"""
import argparse
import sys
import time

import classic
import shipping
import train_srep
from IQTEnhanceLib.models import shipped_models_dir

METHODS = ("linear", "srep")
CONTRASTS = ("t1", "t2")
FACTORS = (2, 3, 4, 5, 6)
DEFAULTS = {("linear", "t1", 4), ("srep", "t1", 4)}   # shipped by train_linear.py / train_srep.py


def zoo_name(method: str, contrast: str, factor: int) -> str:
    return f"{method}_{contrast}_x{factor}"


def train(method: str, contrast: str, factor: int, seed: int):
    name = zoo_name(method, contrast, factor)
    if method == "srep":
        return train_srep.train_model(name, seed, factor=factor, contrast=contrast)
    return shipping.train(method, name, seed, factor=factor, contrast=contrast)


def card(model, path):
    t = model.training
    recipe = (f"- Recipe: `python Tools/train_zoo.py --methods {model.method} --contrasts {t['contrast']} "
              f"--factors {model.factor} --retrain` (the recipe of `train_{model.method}.py` at this factor and "
              "contrast).")
    if model.method == "srep":
        title, lines, limits = train_srep.TITLE, train_srep.model_lines(model), train_srep.LIMITS
        training = [train_srep.data_line(model), recipe]
    else:
        title = classic.TITLES[model.method]
        lines = classic.model_lines(model)
        training = classic.training_lines(model, "train_zoo.py")[:2] + [recipe]
        limits = classic.LIMITS
    return shipping.model_card(model, path, title, lines, training, limits)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--contrasts", nargs="+", choices=CONTRASTS, default=list(CONTRASTS))
    p.add_argument("--factors", nargs="+", type=int, choices=FACTORS, default=list(FACTORS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrain", action="store_true", help="also retrain zoo models already shipped")
    p.add_argument("--no-register", action="store_true", help="write the models and cards, do not list them")
    args = p.parse_args(argv)
    for method in args.methods:
        for contrast in args.contrasts:
            for factor in args.factors:
                if (method, contrast, factor) in DEFAULTS:
                    continue
                path = shipped_models_dir() / f"{zoo_name(method, contrast, factor)}.iqtm"
                if path.exists() and not args.retrain:
                    print(f"{path.name}: shipped (use --retrain)")
                    continue
                started = time.perf_counter()
                model = train(method, contrast, factor, args.seed)
                if contrast == "t1":
                    model.training["evaluation"] = shipping.evaluate(model)
                else:
                    model.training["evaluation"] = shipping.evaluate(model, dataset="icbm2009c_t2")
                    model.training["evaluation_other"] = shipping.evaluate(model)
                shipping.ship(model, path, card, register=not args.no_register, default=False)
                print(f"{path.name}: {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
