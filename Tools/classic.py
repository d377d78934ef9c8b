"""The recipe of the classic baselines' shipped models (``train_linear.py``, ``train_forest.py``):
train with the method's default options, evaluate, write the card, register."""
from __future__ import annotations

import shipping

TITLES = {"linear": "IQT linear regression (ridge)", "forest": "IQT regression forest (ridge + extra-trees)"}


def model_lines(model) -> list:
    p, t = model.params, model.training
    lines = [f"- Feature: {p['feature']}: LQ patch {'×'.join(map(str, p['lq_patch']))} voxels (thick axis first) "
             f"= {p['features']} values from the trilinear up-sampling.",
             f"- Target: {p['target']}: HQ patch {'×'.join(map(str, p['hq_patch']))} = {p['outputs']} values; "
             "overlapping predictions are averaged and added to the trilinear up-sampling.",
             f"- Ridge regression without intercept, penalty λ = {p['lambda']:g} × pairs, chosen on held-out "
             f"realizations among {', '.join(f'{v:g}' for v in p['lambdas_tried'])}."]
    if model.method == "forest":
        return lines + [
            f"- Forest on the ridge's residual: {p['kind']}-trees, {p['trees']} trees, min {p['min_samples_leaf']} "
            f"pairs per leaf, max_features {p['max_features']}, depth {p['depth']}, {p['leaves']} leaves; splits on "
            f"{p['feature_components']} principal components of the features, leaves store "
            f"{p['target_components']} principal components of the residual.",
            f"- Trees stored as plain arrays (no pickle) and evaluated with numpy: scikit-learn is needed only to "
            f"train ({t.get('trainer', '?')}).",
            f"- Validation RMSE (held-out realizations, normalised units): trilinear "
            f"{p['validation_rmse_trilinear']:.4f}, ridge {p['validation_rmse_ridge']:.4f}, ridge + forest "
            f"{p['validation_rmse']:.4f}."]
    return lines + [f"- Validation RMSE (held-out realizations, normalised units): trilinear "
                    f"{p['validation_rmse_trilinear']:.4f}, ridge {min(p['validation_rmse']):.4f}."]


def training_lines(model, script: str) -> list:
    t = model.training
    sim = t["simulation"]
    return [f"- Data: {t['data']}; LQ simulated along {', '.join(sim['axes'])} ({sim['mode']}: SNR {sim['snr']}, "
            f"slice thickness × {sim.get('thickness_scale')}, tissue contrast × {sim['contrast']}), "
            f"{t['realizations_per_volume_axis']} realization(s) per axis, {t['pairs']} patch pairs in the brain mask.",
            f"- Seed {t['seed']}, {t.get('train_seconds_total', t['train_seconds'])} s on 2 shared CPU cores, "
            f"IQTEnhance {t.get('library_version', '?')}, {t.get('date', '?')}.",
            f"- Recipe: `python Tools/{script}` (= `iqt-enhance train --method {model.method} --data icbm2009c_t1 "
            f"--seed {t['seed']}` with the default options)."]


LIMITS = ["- A regression cannot adapt to the noise level: it averages over the training SNR range."]


def main(method: str, argv=None) -> int:
    name = f"{method}_t1_x4"
    args = shipping.parser(f"Recipe of the shipped {method} model {name}").parse_args(argv)

    def card(model, path):
        return shipping.model_card(model, path, TITLES[method], model_lines(model),
                                   training_lines(model, f"train_{method}.py"), LIMITS)

    return shipping.run(args, name, lambda a: shipping.train(method, name, a.seed), card)
