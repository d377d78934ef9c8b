"""Running the study: every method on every case through the engine, with timings, figure slices
kept for re-rendering.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import platform
import time
from pathlib import Path
from typing import Optional

import numpy as np
from IQTEnhanceApps.study.cases import (
    TRAINING_DATASET,
    CaseData,
    dataset_loader,
    default_cases,
    in_training_ranges,
    prepare_case,
)
from IQTEnhanceApps.study.figures import write_figures
from IQTEnhanceApps.study.measures import (
    DDL_K128,
    DDL_SHIPPED,
    DL_SHIPPED,
    SHIPPED_BESIDE,
    PAPER_SREP,
    STUDY_ORDER,
    lesion_measures,
    regression_to_mean,
    training_mean,
    trust_error_correlation,
)
from IQTEnhanceApps.common.runtime import available_cores, peak_rss_mb, peak_rss_reset
from IQTEnhanceApps.study.report import render_report
from IQTEnhanceLib.errors import CancelledError, InputError, ModelError
from IQTEnhanceLib.files import atomic_path, write_json_atomic, write_text_atomic
from IQTEnhanceLib.metrics import evaluate_arrays
from IQTEnhanceLib.normalize import intensity_scale
from IQTEnhanceLib.progress import as_reporter
from IQTEnhanceLib.selfsup import SELF
from IQTEnhanceLib.simulate import ParameterRanges
from IQTEnhanceLib.volume import array_axis


# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class MethodRun:
    name: str                       # the row of the tables (a method, or a variant such as srep-paper)
    label: str
    model: object = None            # ModelFile or None
    options: dict = dataclasses.field(default_factory=dict)
    trust_option: Optional[str] = None
    method: str = ""                # the engine's method (default: name)
    replicate: int = 0              # independently trained models of one row: 0, 1, 2, ...
    slab: int = 0                   # LQ slices scored (a central slab, see Slab); 0: the whole case

    def __post_init__(self):
        self.method = self.method or self.name

    @property
    def key(self) -> str:
        """One run among the replicates of its row (pairs a lesion case's output with its twin's)."""
        return f"{self.name}#{self.replicate}"

    def describe_model(self) -> str:
        if self.model is None:
            return "-"
        if isinstance(self.model, str):
            return "learned from each case's LQ scan (its fine in-plane axes)"
        sha = (self.model.checksum or "")[:12]
        return f"{self.model.name} (sha256 {sha}…)"


# rows that are a variant of a method: row name -> (method, label, the shipped model's name, what it checks)
VARIANTS = {
    PAPER_SREP: ("srep", "IQT-SRep (paper)", "srep_joint_t1_x4",
                 "the paper's own formulation: joint coupled [LQ; HQ] dictionaries, no ridge part"),
    DDL_K128: ("ddl", "IQT-DDL, K = 128", "ddl_k128_t1_x4",
               "the paper's larger dictionary: 128 atoms against the default 64 (quality and time)"),
    DL_SHIPPED: ("dl", "IQT-DL, shipped model", "dl_t1_x4",
                   "the shipped network beside the protocol's (trained on its own simulation)"),
    DDL_SHIPPED: ("ddl", "IQT-DDL, shipped model", "ddl_t1_x4",
                    "the shipped network beside the protocol's (trained on its own simulation)"),
    "linear-self": ("linear", "Linear, learned from the scan", SELF,
                    "no template: the regression learned from the case's own LQ scan"),
    "srep-self": ("srep", "IQT-SRep, learned from the scan", SELF,
                  "no template: the coupled dictionaries learned from the case's own LQ scan"),
}


def training_effort(model) -> Optional[str]:
    """How much training a model had, from its record: a network's steps, patches, wall time and
    device, and how it did against trilinear on held-out data; another model's training seconds."""
    t = getattr(model, "training", None)
    if not t:
        return None
    if "steps" in t:
        text = (f"{t['steps']} steps ({t.get('patches_seen', '?')} patches), {t.get('wall_seconds', 0) / 60:.0f} min "
                f"on {t.get('threads', '?')} {t.get('device', '?')} thread(s)")
        check = t.get("heldout_check") or {}
        if "ratio_to_trilinear" in check:
            text += f"; held-out NRMSE {check['ratio_to_trilinear']:.2f}× trilinear's"
        return text
    seconds = t.get("train_seconds_total", t.get("train_seconds"))
    return f"{seconds:.0f} s" if isinstance(seconds, (int, float)) else None


def _models_for(name: str, method: str, models: dict) -> list:
    """The row's models: those given in ``models`` (one or several replicates), else the shipped one
    (a variant's by its name)."""
    from IQTEnhanceLib.models import load_model

    given = models.get(name)
    sources = [None] if given is None else (list(given) if isinstance(given, (list, tuple)) else [given])
    out = []
    for source in sources:
        model = _shipped_model(name, method) if source is None else (
            source if not isinstance(source, (str, Path)) else load_model(source))
        model.check_fits(method=method)
        out.append(model)
    return out


def _shipped_model(name: str, method: str):
    from IQTEnhanceLib.models import default_model_path, load_model, shipped_models, shipped_models_dir

    source = None
    if name in VARIANTS:
        shipped = {e["name"]: shipped_models_dir() / e["file"] for e in shipped_models(method)}
        source = shipped.get(VARIANTS[name][2])
        if source is None:
            raise ModelError(f"no {VARIANTS[name][2]} model: give one with --model {name}=FILE, or train the "
                             f"study's protocol models (`python Tools/train_protocol.py`)")
    return load_model(source if source is not None else default_model_path(method))


def resolve_methods(requested: Optional[list] = None, models: Optional[dict] = None) -> tuple:
    """([MethodRun], {row: why it is missing}).

    Default: every available method and variant (:data:`VARIANTS`); a learned method without a
    model (shipped or given in ``models``) is listed as missing instead of failing the study.
    """
    from IQTEnhanceLib.methods import METHOD_MODULES, available_methods, get_method

    models = dict(models or {})
    known = list(METHOD_MODULES) + list(VARIANTS)
    unknown = [m for m in (requested or []) if m not in known]
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    names = list(requested) if requested else sorted(
        (m for m in known if m not in SHIPPED_BESIDE or SHIPPED_BESIDE[m] in models),
        key=lambda m: STUDY_ORDER.index(m) if m in STUDY_ORDER else len(STUDY_ORDER))
    present = set(available_methods())
    runs, missing = [], {}
    for name in names:
        method = VARIANTS[name][0] if name in VARIANTS else name
        if method not in present:
            missing[name] = "its module is not in this version"
            continue
        spec = get_method(method)
        replicates = [None]
        if name in VARIANTS and VARIANTS[name][2] == SELF:
            replicates = [SELF]     # learned anew from every case's LQ scan
        elif spec.needs_model:
            try:
                replicates = _models_for(name, method, models)
            except ModelError as exc:
                missing[name] = str(exc)
                continue
        trust = spec.extra_switches().get("trust")
        options = {trust: True} if trust else {}
        label = VARIANTS[name][1] if name in VARIANTS else spec.label
        runs += [MethodRun(name, label, model, dict(options), trust, method, n) for n, model in enumerate(replicates)]
    return runs, missing


SWEEPABLE = ("srep", PAPER_SREP)   # rows whose model a λ sweep can code at other λ
# --full's λ sweep: the paper's range 0.001-0.2 (the joint SRep's own 0.05 is added on the slab).
FULL_LAMBDA_SWEEP = (0.001, 0.01, 0.02, 0.1, 0.2)
# The λ sweep scores a central slab of the brain, not the whole case: the support, and the coding
# time, grow as λ falls.  Whole Colin27 case (protocol paper SRep, 1 thread): λ 0.01 coded in 513 s
# against 75 s at 0.2; a slab of 6 LQ slices (+2 each side) of the uncropped head took 45 s at 0.05,
# 88 s at 0.01 and 151 s at 0.001 (NRMSE 0.0644, 0.0632, 0.0631).
LAMBDA_SWEEP_SLAB = 4      # LQ slices scored (16 mm at 4 mm slices, ~250k brain voxels)
SLAB_MARGIN = 2            # LQ slices coded on each side and not scored: a patch spans 2 LQ slices,
#                            trilinear features 1 more, so the scored slices see every patch they would
#                            see in the whole case


def lambda_sweep_runs(runs: list, lambdas, models: Optional[dict] = None, rows=(PAPER_SREP,), slab: int = 0) -> list:
    """Rows ``ROW@λ`` for each row of ``rows`` (default: the paper's SRep, whose λ the paper
    discusses): the row's model (its first replicate, else the shipped one) coded at each inference
    λ of ``lambdas``.  With ``slab`` > 0 every such row scores a central slab of that many LQ
    slices (:func:`case_slab`), and the model's own λ is added, on the same slab, for comparison."""
    if not lambdas:
        return []
    bad = [lam for lam in lambdas if not lam > 0]
    if bad:
        raise InputError(f"the λ sweep takes positive values (got {', '.join(map(str, bad))})")
    unknown = [row for row in rows if row not in SWEEPABLE]
    if unknown:
        raise InputError(f"a λ sweep codes {' or '.join(SWEEPABLE)} (got {', '.join(unknown)})")
    if slab < 0:
        raise InputError(f"the λ sweep's slab is a number of LQ slices >= 0 (got {slab})")
    out = []
    for row in rows:
        base = next((r for r in runs if r.name == row and r.replicate == 0), None)
        if base is None:
            found, missing = resolve_methods([row], models)
            if missing:
                raise ModelError(f"the λ sweep of {row}: {missing[row]}")
            base = found[0]
        own = model_lambda(base.model)
        swept = sorted(set(lambdas) | ({own} if slab and own is not None else set()))
        out += [MethodRun(f"{row}@{lam:g}", f"{base.label}, λ = {lam:g}", base.model, dict(base.options, lam=float(lam)),
                          base.trust_option, "srep", slab=slab) for lam in swept]
    return out


@dataclasses.dataclass
class Slab:
    """A central slab of a case along the thick ``axis``: LQ slices ``start`` to ``stop`` (of
    ``n_lq``) are scored, ``margin`` more on each side are coded too (LQ slice m covers HQ slices
    m·f … m·f+f−1 at factor f)."""
    start: int
    stop: int
    margin: int
    n_lq: int
    factor: int
    axis: str

    @property
    def coded(self) -> tuple:
        """The LQ slices coded: the scored ones and the margin (inside the case)."""
        return max(self.start - self.margin, 0), min(self.stop + self.margin, self.n_lq)

    def lq_input(self, lq):
        """The LQ volume of the coded slices (a crop, geometry moved with it)."""
        from IQTEnhanceLib.volume import Volume, ijk_index

        ax, a = array_axis(self.axis), ijk_index(self.axis)
        lo, hi = self.coded
        array = np.ascontiguousarray(np.take(lq.array, np.arange(lo, hi), axis=ax))
        origin = lq.origin + lq.direction[:, a] * lq.spacing[a] * lo
        return Volume(array, lq.spacing.copy(), origin, lq.direction.copy())

    def of_case(self, array: np.ndarray) -> np.ndarray:
        """The scored HQ slices of a whole-case HQ array (truth, mask)."""
        return self._hq_slices(array, 0)

    def of_output(self, array: np.ndarray) -> np.ndarray:
        """The scored HQ slices of the output of :meth:`lq_input`'s enhancement."""
        return self._hq_slices(array, self.coded[0])

    def _hq_slices(self, array: np.ndarray, first_lq: int) -> np.ndarray:
        f = self.factor
        return np.take(array, np.arange((self.start - first_lq) * f, (self.stop - first_lq) * f),
                       axis=array_axis(self.axis))


def case_slab(mask: np.ndarray, lq_shape: tuple, factor: int, axis: str, slices: int,
              margin: int = SLAB_MARGIN) -> Slab:
    """The ``slices`` LQ slices around the brain mask's centre along ``axis`` (the whole case when it
    has no more), and the coded margin."""
    ax = array_axis(axis)
    n_lq = lq_shape[ax]
    if slices <= 0 or slices >= n_lq:
        return Slab(0, n_lq, 0, n_lq, factor, axis)
    profile = mask.sum(axis=tuple(a for a in range(3) if a != ax)).astype(float)
    centre = (profile * np.arange(len(profile))).sum() / max(profile.sum(), 1.0) / factor   # in LQ slices
    start = int(np.clip(round(centre - slices / 2), 0, n_lq - slices))
    return Slab(start, start + slices, margin, n_lq, factor, axis)


def model_lambda(model) -> Optional[float]:
    """The λ an SRep model codes at by default (:func:`IQTEnhanceLib.methods.srep.inference_lambda`);
    None for a row without such a model."""
    from IQTEnhanceLib.methods.srep import inference_lambda

    try:
        return inference_lambda(model.params)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class StudyConfig:
    out_dir: Path
    cases: list
    methods: Optional[list] = None       # names; None = every available method
    models: Optional[dict] = None        # method -> path or ModelFile (default: shipped)
    seeds: tuple = (0,)
    factor: int = 4
    axis: str = "k"
    device: str = "cpu"
    fixtures: bool = False
    crop_margin: Optional[int] = 6
    figures: bool = True
    command: str = "iqt-enhance benchmark quality"
    protocol: Optional[dict] = None      # the training protocol of the models given (study.protocol)
    lambda_sweep: tuple = ()             # extra rows ROW@λ: a row's model coded at these λ (the paper's λ check)
    lambda_sweep_rows: tuple = (PAPER_SREP,)  # the rows swept (:data:`SWEEPABLE`)
    lambda_sweep_slab: int = LAMBDA_SWEEP_SLAB   # LQ slices the swept rows score (0: the whole case)
    resume: bool = False                 # keep the records already in out_dir (see :func:`previous_results`)
    jobs: int = 1                        # worker processes, each running whole cases (see StudyRun.run_parallel)


def _figure_slice(data: CaseData) -> int:
    """The coronal (j) index shown for every method: through the largest lesion's centre, else
    through the brain's centre of mass.  Coronal, so the thick axis k runs vertically."""
    if data.lesions:
        biggest = max(data.lesions, key=lambda p: (p["radius_mm"], -p["id"]))
        return int(biggest["centre_kji"][1])
    idx = np.argwhere(data.mask)
    return int(np.round(idx[:, 1].mean()))


class StudyRun:
    """The state of one study run: methods, the cases' data, records, failures, lesion rows, the
    slices kept for figures; :meth:`run_seed` runs every case and method for one noise seed."""

    def __init__(self, config: StudyConfig, reporter, log, mu_train: Optional[float] = None):
        self.config, self.reporter, self.log = config, reporter, log
        self.runs, self.missing = resolve_methods(config.methods, config.models)
        self.runs += lambda_sweep_runs(self.runs, config.lambda_sweep, config.models, config.lambda_sweep_rows,
                                       config.lambda_sweep_slab)
        self.rss_measured = False        # whether the current run's peak memory was reset before it
        if not self.runs:
            raise InputError("no method to evaluate")
        names = {c.name for c in config.cases}
        if len(names) != len(config.cases):
            raise InputError("case names must be unique")
        self.loader = dataset_loader(config.fixtures)
        if mu_train is None:
            mu_train = training_mean(self.loader, factor=config.factor, axis=config.axis,
                                     crop_margin=config.crop_margin)
            log(f"training mean intensity (normalised units): {mu_train:.4f}")
        self.mu_train = mu_train
        self.records = []           # one per case × seed × method
        self.slab_records = []      # the same for rows scored on a slab (the λ sweep): not whole-case numbers
        self.failures = []          # method runs that raised
        self.lesion_tables = []     # per-lesion rows
        self.figure_data = {}       # case -> slices for the figures (first seed)
        self.case_info = {}
        self.needed_twins = {c.paired_with for c in config.cases if c.paired_with}
        self.by_name = {c.name: c for c in config.cases}
        self.earlier_seconds = 0.0  # wall time of the earlier runs whose records are kept (resume)
        self.kept = {}              # (case, seed, row, replicate) -> a record kept from an earlier run
        if config.resume:
            self.keep_previous(previous_results(config))
        self.total = sum(len(self.pending(c, seed)) for c in self.case_order() for seed in config.seeds)
        self.done = 0

    def keep_previous(self, previous: Optional[dict]) -> None:
        """Take over an earlier run's records whose case, seed, row, replicate and model checksum this
        run would produce again (with their lesion rows, case descriptions and figure slices); the rest
        (other rows or cases, failures, changed models) is run anew or dropped."""
        if previous is None:
            return
        # by row and model checksum, not replicate number: a new replicate may sort before the old ones;
        # a row scored on a slab only from records of the same slab size (whole-case records otherwise)
        wanted = {(r.name, getattr(r.model, "checksum", None), r.slab): r.replicate for r in self.runs}
        cases = {c.name for c in self.config.cases}
        earlier = previous["records"] + previous.get("lambda_sweep", {}).get("records", [])
        for rec in earlier:
            replicate = wanted.get((rec["method"], rec.get("model_sha256"), rec.get("slab_lq_slices", 0)))
            if replicate is not None and rec["case"] in cases and rec["seed"] in self.config.seeds:
                self.kept[(rec["case"], rec["seed"], rec["method"], replicate)] = dict(rec, replicate=replicate)
        self.records = [r for r in self.kept.values() if not r.get("slab_lq_slices")]
        self.slab_records = [r for r in self.kept.values() if r.get("slab_lq_slices")]
        # a lesion row belongs to a kept record by its model's checksum (rows of older runs: by row)
        kept_models = {(r["case"], r["seed"], r["method"], r.get("model_sha256")) for r in self.records}
        kept_rows = {k[:3] for k in kept_models}
        self.lesion_tables = [row for row in previous.get("lesions", [])
                              if ((row["case"], row["seed"], row["method"], row["model_sha256"]) in kept_models
                                  if "model_sha256" in row else (row["case"], row["seed"], row["method"]) in kept_rows)]
        self.case_info = {c["name"]: {k: v for k, v in c.items() if k != "name"}
                          for c in previous.get("cases", []) if c["name"] in cases}
        slices = Path(self.config.out_dir) / FIGURE_SLICES
        if self.config.figures and self.kept and not slices.exists():
            # the slices are not committed with a report (.gitignore): resuming in a fresh checkout
            # redraws the figures from the new rows alone
            self.log(f"note: {slices} is missing, so the figures will show only the rows run now; copy the "
                     "earlier run's figure_slices.npz there first to keep its rows in the figures")
        if slices.exists() and self.config.seeds[0] == previous["seeds"][0]:
            self.figure_data = {case: fd for case, fd in load_figure_slices(slices).items() if case in cases}
            kept_cells = {(k[0], k[2]) for k in self.kept}
            for case, fd in self.figure_data.items():
                for kind in ("outputs", "trust"):
                    fd[kind] = {m: a for m, a in fd[kind].items() if (case, m) in kept_cells}
        self.earlier_seconds = float(previous.get("seconds", 0.0))
        self.log(f"resuming: {len(self.kept)} record(s) kept from {self.config.out_dir}")

    def pending(self, case, seed: int) -> list:
        """The runs ``case`` needs for ``seed``: those without a kept record, and for a twin case
        (whose outputs the pathology case compares with) also those its paired case still needs
        (a slab row excepted: it has no lesion measures)."""
        def missing(case_name):
            return [r for r in self.runs if (case_name, seed, r.name, r.replicate) not in self.kept]

        if case.name not in self.needed_twins:
            return missing(case.name) if case.name in self.by_name else []
        needed = {(r.name, r.replicate) for c in self.config.cases if c.paired_with == case.name
                  for r in missing(c.name) if not r.slab}
        own = {(r.name, r.replicate) for r in missing(case.name)} if case.name in self.by_name else set()
        return [r for r in self.runs if (r.name, r.replicate) in needed | own]

    def case_groups(self) -> list:
        """[(seed, [case names])]: the units a worker runs, a pathology case together with its
        lesion-free twin (whose outputs it compares with); only groups with something to run."""
        groups = []
        for seed in self.config.seeds:
            by_key = {}
            for case in self.case_order():
                if self.pending(case, seed):
                    by_key.setdefault(case.paired_with or case.name, []).append(case.name)
            groups += [(seed, names) for names in by_key.values()]
        return groups

    def run_parallel(self, jobs: int, checkpoint=None) -> None:
        """Run the case groups in ``jobs`` worker processes of ``cores // jobs`` torch threads each;
        merge each group's records as it completes, then ``checkpoint()``.  Whole cases in parallel
        use the cores better than threads inside one method run: the study's time goes to SRep's
        batched lasso solves, which gain less than 2× from a second thread (bench_study_jobs.py, 2
        cores, the paper's SRep on two whole brains: 2 workers took 0.80× one 2-thread process's
        wall time, same records).  Cancel terminates the workers."""
        import multiprocessing

        groups = self.case_groups()
        threads = max(1, available_cores() // jobs)
        # spawn, not fork: the parent has torch (and its thread pools) loaded already
        pool = multiprocessing.get_context("spawn").Pool(min(jobs, max(len(groups), 1)))
        try:
            pending = {i: pool.apply_async(_run_group, (self.config, seed, names, self.kept, threads, self.mu_train))
                       for i, (seed, names) in enumerate(groups)}
            while pending:
                self.reporter(self.done / max(self.total, 1),
                              f"{len(groups) - len(pending)} of {len(groups)} case groups done ({jobs} workers)")
                ready = [i for i, r in pending.items() if r.ready()]
                if not ready:
                    time.sleep(0.5)
                    continue
                for i in ready:
                    part = pending.pop(i).get()   # a worker's exception is raised here
                    self.merge(part)
                    if checkpoint is not None:
                        checkpoint()
        except BaseException:
            pool.terminate()
            raise
        else:
            pool.close()
        finally:
            pool.join()

    def merge(self, part: dict) -> None:
        """Take a worker's records, lesion rows, failures, case descriptions and figure slices."""
        self.records += part["records"]
        self.slab_records += part["slab_records"]
        for rec in part["records"] + part["slab_records"]:
            self.log(_record_line(rec))
        self.lesion_tables += part["lesions"]
        self.failures += part["failures"]
        self.done += part["runs"]
        for name, info in part["case_info"].items():
            self.case_info.setdefault(name, info)
        for name, fd in part["figure_data"].items():
            mine = self.figure_data.setdefault(name, {"outputs": {}, "trust": {}})
            for kind in ("outputs", "trust"):
                mine[kind].update(fd.pop(kind, {}))
            mine.update(fd)

    def case_order(self) -> list:
        """Twins first so the pathology case finds them; a twin not itself in the study is run unreported."""
        order = sorted(self.config.cases, key=lambda c: c.paired_with is not None)
        for twin in self.needed_twins - set(self.by_name):
            order.insert(0, dataclasses.replace(next(c for c in default_cases(True) if c.name == twin), name=twin))
        return order

    def run_seed(self, seed: int, checkpoint=None) -> None:
        """Run every case for ``seed``; ``checkpoint()`` after each case that ran something."""
        twin_outputs = {}   # case name -> {"truth": array, method: array}
        for case in self.case_order():
            if self.pending(case, seed):
                self.run_case(case, seed, twin_outputs)
                if checkpoint is not None:
                    checkpoint()

    def run_case(self, case, seed: int, twin_outputs: dict) -> None:
        config = self.config
        reported = case.name in self.by_name
        data = prepare_case(case, self.loader, factor=config.factor, axis=config.axis, seed=seed,
                            crop_margin=config.crop_margin)
        truth = data.hq.array
        if reported:
            self.case_info.setdefault(case.name, {
                "title": case.title, "group": case.group, "dataset": case.dataset,
                "description": case.describe(config.factor), "note": case.note,
                "in_training_ranges": in_training_ranges(case, config.factor),
                "shape": list(truth.shape), "brain_voxels": int(data.mask.sum()),
                "noise_sigma": data.record["noise_sigma"], "lesions": data.lesions,
            })
        if case.name in self.needed_twins:
            twin_outputs[case.name] = {"truth": truth}
        fig_j = _figure_slice(data)
        scale = intensity_scale(data.lq.array)   # once per case, for every method's pull measure
        if reported and seed == config.seeds[0]:
            fd = self.figure_data.setdefault(case.name, {"outputs": {}, "trust": {}})
            fd.update({"j": fig_j, "truth": truth[:, fig_j, :].copy(), "mask": data.mask[:, fig_j, :].copy(),
                       "lq": None})
        # the λ sweep's slab (every slab row of a study scores the same one)
        slab = case_slab(data.mask, data.lq.array.shape, config.factor, config.axis, config.lambda_sweep_slab)
        for run in self.pending(case, seed):
            result = self.enhance(run, case, data, seed, slab if run.slab else None, scale)
            self.done += 1
            if result is None:
                continue
            if run.slab:
                if (case.name, seed, run.name, run.replicate) not in self.kept:
                    self.record_slab(run, case, data, seed, result, slab, scale)
                continue
            if case.name in self.needed_twins:
                twin_outputs[case.name][run.key] = result[0].volume.array
            if reported and (case.name, seed, run.name, run.replicate) not in self.kept:
                twin = twin_outputs.get(case.paired_with) if case.paired_with else None
                self.record(run, case, data, seed, result, twin, fig_j, scale)

    def enhance(self, run, case, data, seed: int, slab: Optional[Slab] = None, scale: Optional[float] = None):
        """(result, seconds), or None when the method failed (recorded: one broken method must not
        sink a 30-minute study).  With a ``slab`` only its LQ slices are coded (:meth:`Slab.lq_input`),
        normalised by the whole case's intensity ``scale`` so that they code as in the whole case."""
        from IQTEnhanceLib import api
        from IQTEnhanceLib.grid import hq_geometry

        config, at = self.config, self.done / max(self.total, 1)
        self.reporter(at, f"{case.name} (seed {seed}): {run.name}")
        lq, expected, normalisation = data.lq, data.hq.array.shape, None
        if slab is not None:
            lq, normalisation = slab.lq_input(data.lq), scale
            expected = hq_geometry(lq, config.factor, config.axis)["shape"]
        self.rss_measured = peak_rss_reset()
        t0 = time.perf_counter()
        try:
            result = api.enhance(lq, run.method, model=run.model, axis=config.axis,
                                 factor=config.factor if run.model is None else None, device=config.device,
                                 progress=self.reporter.sub(at, (self.done + 1) / max(self.total, 1),
                                                            f"{case.name}: {run.name}"),
                                 intensity_scale=normalisation, **run.options)
            if result.volume.array.shape != expected:
                raise RuntimeError(f"returned {result.volume.array.shape} for a {expected} reference")
        except CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            self.failures.append({"case": case.name, "seed": seed, "method": run.name,
                                  "error": f"{type(exc).__name__}: {exc}"})
            self.log(f"  {case.name:22s} seed {seed} {run.name:10s} FAILED: {type(exc).__name__}: {exc}")
            return None
        return result, time.perf_counter() - t0

    def record(self, run, case, data, seed: int, result, twin, fig_j: int, scale: float) -> None:
        """Score one output and keep its record, lesion rows and figure slice."""
        result, seconds = result
        output, truth = result.volume.array, data.hq.array
        rec = {"case": case.name, "seed": seed, "method": run.name, "replicate": run.replicate, "seconds": seconds,
               "model_sha256": getattr(run.model, "checksum", None),
               "peak_rss_mb": peak_rss_mb() if self.rss_measured else None, "threads": _torch_threads()}
        rec.update({k: v for k, v in evaluate_arrays(output, truth, data.mask).items() if k != "voxels"})
        rec.update(regression_to_mean(output, truth, data.mask, scale, self.mu_train))
        trust = next((v for k, v in result.extras.items() if "trust" in k), None)
        if trust is not None:
            rec["trust_error_corr"] = trust_error_correlation(trust.array, output, truth, data.mask)
        if data.lesion_index is not None:
            lm = lesion_measures(output, truth, data.lesion_index, data.lesions,
                                 twin.get(run.key) if twin else None, twin["truth"] if twin else None)
            for row in lm.pop("per_lesion"):
                self.lesion_tables.append({"case": case.name, "seed": seed, "method": run.name,
                                           "model_sha256": rec["model_sha256"], **row})
            rec.update(lm)
        self.records.append(rec)
        if case.name in self.figure_data and seed == self.config.seeds[0]:
            fd = self.figure_data[case.name]
            fd["outputs"][run.name] = output[:, fig_j, :].copy()
            if trust is not None:
                fd["trust"][run.name] = trust.array[:, fig_j, :].copy()
        self.log(_record_line(rec))

    def record_slab(self, run, case, data, seed: int, result, slab: Slab, scale: float) -> None:
        """Score a slab row's output on its slab's scored slices (no lesion measures, no figure)."""
        result, seconds = result
        output, truth, mask = slab.of_output(result.volume.array), slab.of_case(data.hq.array), slab.of_case(data.mask)
        rec = {"case": case.name, "seed": seed, "method": run.name, "replicate": run.replicate, "seconds": seconds,
               "model_sha256": getattr(run.model, "checksum", None),
               "peak_rss_mb": peak_rss_mb() if self.rss_measured else None, "threads": _torch_threads(),
               "slab_lq_slices": run.slab, "slab": [slab.start, slab.stop], "slab_coded": list(slab.coded),
               "slab_brain_voxels": int(mask.sum())}
        rec.update({k: v for k, v in evaluate_arrays(output, truth, mask).items() if k != "voxels"})
        rec.update(regression_to_mean(output, truth, mask, scale, self.mu_train))
        self.slab_records.append(rec)
        self.log(_record_line(rec))

    def describe(self, r: MethodRun) -> dict:
        """A row's entry in results.json's methods: its model, training and λ."""
        return {"name": r.name, "label": r.label, "engine_method": r.method, "model": r.describe_model(),
                "model_sha256": getattr(r.model, "checksum", None),
                "replicates": sum(1 for o in self.runs if o.name == r.name),
                "training_data": (r.model.training.get("data") if hasattr(r.model, "training") else
                                  "the case's own LQ scan" if r.model == SELF else None),
                "training_simulation": (r.model.training.get("simulation") if hasattr(r.model, "training")
                                        else None),
                "protocol": (r.model.training.get("protocol", {}).get("name")
                             if hasattr(r.model, "training") else None),
                "training_effort": training_effort(r.model),
                "lam": r.options.get("lam") or (model_lambda(r.model) if r.method == "srep" else None)}

    def slab_results(self) -> dict:
        """results.json's ``lambda_sweep``: the rows scored on a central slab and their records, kept
        apart from the whole-case records (their numbers are not whole-case numbers)."""
        runs = [r for r in self.runs if r.slab]
        if not runs:
            return {}
        own = {r.name.split("@", 1)[0]: model_lambda(r.model) for r in runs}
        return {"lambda_sweep": {"slab_lq_slices": runs[0].slab, "margin_lq_slices": SLAB_MARGIN, "own_lam": own,
                                 "methods": [self.describe(r) for r in runs], "records": self.slab_records}}

    def results(self, seconds: float) -> dict:
        config = self.config
        return {
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": config.command, "fixtures": config.fixtures, "seeds": list(config.seeds),
            "factor": config.factor, "axis": config.axis, "device": config.device,
            "training_dataset": TRAINING_DATASET, "training_ranges": dataclasses.asdict(ParameterRanges()),
            "mu_train": self.mu_train, "training_protocol": config.protocol,
            "methods": [self.describe(r) for r in self.runs if r.replicate == 0 and not r.slab],
            "missing": self.missing,
            "cases": [dict(name=c.name, **self.case_info[c.name]) for c in config.cases if c.name in self.case_info],
            "records": self.records, "lesions": self.lesion_tables, "failures": self.failures,
            **self.slab_results(),
            "seconds": self.earlier_seconds + seconds,
            "machine": f"{platform.machine()}, {available_cores()} CPU cores, Python {platform.python_version()}",
            "engine_version": _engine_version(), "resumed": bool(self.kept),
        }


def run_study(config: StudyConfig, *, progress=None, cancel=None, log=print) -> dict:
    """Run every method on every case and seed, write the report and figures to ``config.out_dir``,
    return the results (also written as ``results.json``)."""
    reporter = as_reporter(progress, cancel, stage="benchmark")
    started = time.perf_counter()
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study = StudyRun(config, reporter, log)

    def checkpoint():
        """Save what is measured so far (records and figure slices) in CHECKPOINT: a killed or
        cancelled run loses at most one case, and ``--resume`` goes on from there.  results.json and
        the report are written only when the run completes (the checkpoint is then removed)."""
        if config.figures:
            save_figure_slices(study.figure_data, out_dir / FIGURE_SLICES)
        write_json_atomic(out_dir / CHECKPOINT, study.results(time.perf_counter() - started), indent=1)

    if config.jobs > 1:
        study.run_parallel(config.jobs, checkpoint)
    else:
        for seed in config.seeds:
            study.run_seed(seed, checkpoint)
    results = study.results(time.perf_counter() - started)
    if config.figures:
        save_figure_slices(study.figure_data, out_dir / FIGURE_SLICES)
        results["figures"] = write_figures(results, study.figure_data, out_dir)
    write_json_atomic(out_dir / "results.json", results, indent=1)
    write_text_atomic(out_dir / "README.md", render_report(results))
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    reporter(1.0, "benchmark done", force=True)
    return results


def _record_line(rec: dict) -> str:
    where = f", LQ slices {rec['slab'][0]}-{rec['slab'][1] - 1}" if rec.get("slab") else ""
    return (f"  {rec['case']:22s} seed {rec['seed']} {rec['method']:10s} NRMSE {rec['nrmse']:.4f} SSIM "
            f"{rec['ssim']:.4f} pull {rec['rtm_pull']:+.1f}% ({rec['seconds']:.1f} s{where})")


def _run_group(config: StudyConfig, seed: int, case_names: list, kept: dict, threads: int, mu_train: float) -> dict:
    """A worker process's share of :meth:`StudyRun.run_parallel`: the cases ``case_names`` (a twin
    first) for ``seed``, skipping the records in ``kept``; returns what it measured."""
    import torch

    torch.set_num_threads(threads)
    cases = [c for c in config.cases if c.name in case_names]
    sub = dataclasses.replace(config, cases=cases, resume=False, jobs=1)
    study = StudyRun(sub, as_reporter(None, None), lambda message: None, mu_train=mu_train)  # the parent logs
    study.kept = kept      # pending() looks up only this group's cases
    study.run_seed(seed)
    return {"records": study.records, "slab_records": study.slab_records, "lesions": study.lesion_tables,
            "failures": study.failures,
            "case_info": study.case_info, "figure_data": study.figure_data, "runs": study.done}


FIGURE_SLICES = "figure_slices.npz"  # the slices the figures show, to redraw them without a rerun
CHECKPOINT = "checkpoint.json"       # the records of a run not finished yet (--resume reads it first)


def _torch_threads() -> Optional[int]:
    """torch's CPU threads during a run (records of a resumed study may come from runs with different
    thread counts, which their seconds depend on); None without torch."""
    import sys

    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else None


def _engine_version() -> str:
    from IQTEnhanceLib import __version__

    return __version__


def previous_results(config: StudyConfig) -> Optional[dict]:
    """The results an earlier run left in ``config.out_dir`` (its checkpoint when it was cut short,
    else its results.json), or None when there are none.  Raises InputError when they were measured
    under another set-up (factor, axis, device, data, engine version, or a case of the same name
    defined differently): their records would not be comparable with new ones."""
    source = Path(config.out_dir) / CHECKPOINT
    if not source.exists():
        source = Path(config.out_dir) / "results.json"
    if not source.exists():
        return None
    previous = json.loads(source.read_text())
    mine = {"factor": config.factor, "axis": config.axis, "device": config.device, "fixtures": config.fixtures}
    differ = [f"{k} {previous.get(k)!r} there, {v!r} here" for k, v in mine.items() if previous.get(k) != v]
    if previous.get("engine_version", _engine_version()) != _engine_version():
        differ.append(f"engine {previous['engine_version']} there, {_engine_version()} here")
    described = {c["name"]: c.get("description") for c in previous.get("cases", [])}
    differ += [f"case {c.name} is defined differently" for c in config.cases
               if c.name in described and described[c.name] != c.describe(config.factor)]
    if differ:
        raise InputError(f"cannot resume from {source}: it was measured under another set-up ({'; '.join(differ)}); "
                         "choose another --out or drop --resume")
    return previous


def save_figure_slices(figure_data: dict, path: Path) -> None:
    arrays = {}
    for case, fd in figure_data.items():
        arrays[f"{case}|j"] = np.asarray(fd["j"])
        arrays[f"{case}|truth"] = fd["truth"]
        arrays[f"{case}|mask"] = fd["mask"]
        for kind in ("outputs", "trust"):
            for method, a in fd[kind].items():
                arrays[f"{case}|{kind}|{method}"] = a
    with atomic_path(path, ".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def load_figure_slices(path: Path) -> dict:
    figure_data = {}
    with np.load(path) as z:
        for key in z.files:
            parts = key.split("|")
            fd = figure_data.setdefault(parts[0], {"outputs": {}, "trust": {}})
            if len(parts) == 2:
                fd[parts[1]] = int(z[key]) if parts[1] == "j" else z[key]
            else:
                fd[parts[1]][parts[2]] = z[key]
    return figure_data


def rerender(out_dir) -> dict:
    """Redraw the figures (when the slices were saved) and rewrite README.md from ``results.json``
    in ``out_dir``: a change to the report's text or figures needs no new run."""
    out_dir = Path(out_dir)
    source = out_dir / "results.json"
    if not source.exists():
        raise InputError(f"{source}: no results to render; run the benchmark first")
    results = json.loads(source.read_text())
    if (out_dir / FIGURE_SLICES).exists():
        results["figures"] = write_figures(results, load_figure_slices(out_dir / FIGURE_SLICES), out_dir)
        write_json_atomic(source, results, indent=1)
    write_text_atomic(out_dir / "README.md", render_report(results))
    return results

