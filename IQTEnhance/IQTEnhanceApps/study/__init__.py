"""Evaluation study: every method, in and out of the training distribution, with a report.

The paper's claim (Eldaly et al., MELBA 2024): on data unlike the training data, IQT-SRep and
IQT-DDL degrade less than the supervised IQT-DL, because a supervised regressor falls back to the
training mean.  This package measures it on real brain MRI:

* **cases** (:mod:`.cases`): an in-distribution one (another subject, simulation inside the
  training ranges), unseen contrast, simulation outside the training ranges, and synthetic
  pathology (spheres inserted into the HQ before simulation);
* **measures** (:mod:`.measures`): NRMSE, PSNR, SSIM in the brain mask; lesion NRMSE and contrast
  kept; the pull to the training mean; the claim checks;
* **runner** (:mod:`.runner`): every method through the engine's registry and ``api.enhance``;
* **output**: ``README.md`` (:mod:`.report`), PNG figures (:mod:`.figures`) and ``results.json``.

The command is ``iqt-enhance benchmark quality`` (:mod:`.command`).
"""
from .cases import (Case, LesionSpec, dataset_loader, default_cases, fixture_cases, in_training_ranges,
                    insert_lesions, prepare_case)
from .measures import aggregate, claim_checks, lesion_measures, measured_snr, regression_to_mean, tissue_contrast
from .report import describe_training_simulation, render_report
from .runner import StudyConfig, run_study

__all__ = ["Case", "LesionSpec", "StudyConfig", "aggregate", "claim_checks", "dataset_loader", "default_cases",
           "describe_training_simulation", "fixture_cases", "in_training_ranges", "insert_lesions",
           "lesion_measures", "measured_snr", "prepare_case", "regression_to_mean", "render_report", "run_study",
           "tissue_contrast"]
