"""The applications built on the engine (:mod:`IQTEnhanceLib`): the ``iqt-enhance`` command line
(:mod:`.cli`), the demo (:mod:`.demo`), cohort batch on Dask (:mod:`.batch`) and the evaluation
study (:mod:`.study`), with what they share (:mod:`.common`).  The engine never imports them.
"""
