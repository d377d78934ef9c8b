"""What the command-line applications share: output checks and atomic outputs (:mod:`.files`),
Ctrl-C, progress and messages (:mod:`.runtime`), method options as flags (:mod:`.options`)."""
