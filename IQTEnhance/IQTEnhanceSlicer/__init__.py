"""Glue between Slicer's MRML scene and the IQTEnhance engine, without Qt.

Everything here runs in plain Python against a real MRML scene (the ``slicer-core`` wheel gives
one without the Slicer application), so it is tested with pytest; ``IQTEnhance.py`` adds only the
Qt panel, the QTimer that polls background jobs and the view layout.

- :mod:`.mrml`     volume node <-> engine :class:`~IQTEnhanceLib.volume.Volume` (LPS <-> RAS, oblique
                   IJKToRAS), output node creation with the input's window/level.
- :mod:`.worker`   the engine in a worker process (files for progress and results, Cancel kills it,
                   a warm worker reused between runs): Slicer's event loop cannot starve it.
- :mod:`.runner`   the same job interface in a background thread (``backend="thread"``) with a
                   progress queue, cooperative cancel and a one-time result hand-off.
- :mod:`.tasks`    enhancement and comparison as main-thread prepare / worker run / main-thread finish.
- :mod:`.logic`    the console API (blocking ``enhance``, non-blocking ``start_enhance``, ``compare``).
- :mod:`.panel`    what the panel shows, derived from the method registry: option fields, state table.
- :mod:`.deps`     checks for torch and the other engine packages; installs only with confirmation.

Only :mod:`.mrml`, :mod:`.tasks` and :mod:`.logic` import ``slicer``/``vtk``, and only the MRML
core classes that both Slicer and ``slicer-core`` provide.
"""
