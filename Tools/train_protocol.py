"""Train the study's learned rows under one training protocol (``iqt-study-1``: the ICBM 2009c T1
template, ×4 along i, j and k, the library's stochastic ranges plus a quarter of low-field draws),
several seeds each, into one folder for ``iqt-enhance benchmark quality --protocol-models DIR``.

    python Tools/train_protocol.py --out protocol-models                       # every row, seeds 0 1 2
    python Tools/train_protocol.py --out protocol-models --rows linear srep srep-paper --seeds 0 1 2
    python Tools/train_protocol.py --out protocol-models --rows dl ddl ddl-k128 --network-minutes 30 --device cuda

Measured on 2 cores with ``--threads 1`` and two such trainings side by side: linear ~1 min, forest ~2 min,
srep 3-4 min, srep-paper 2-3 min per model.  The networks take their budget (``--network-minutes``,
default 20), or stop at convergence once past half of it: with a 44-minute budget on one thread the DL
and DDL of ``iqt-study-1`` stopped after 22-23 min at 0.85-0.88x the interpolation's validation loss,
still on the plateau that the shipped networks (trained without low-field draws) left after ~600
steps; a GPU run (``--device cuda``) is the way to networks trained to the end.
"""
import argparse
import sys
from pathlib import Path

import shipping  # noqa: F401  (puts the engine on the path)
from IQTEnhanceApps.study.protocol import ROWS, STUDY_PROTOCOL, train_protocol_models


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the models (ROW_seedN.iqtm)")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--network-minutes", type=float, default=20.0, help="time budget of each DL/DDL training")
    p.add_argument("--device", default="cpu", help="device of the network trainings")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default); 1 lets two trainings share 2 cores")
    args = p.parse_args(argv)
    # intensity jitter and learning rate pinned at ±10% and 1e-3: the protocol's committed networks were
    # trained with them (the library's defaults changed after), so a re-run reproduces the committed study
    networks = {"minutes": args.network_minutes, "device": args.device, "until_converged": True,
                "validation_draws": 8, "intensity_jitter": 0.1, "lr": 1e-3}
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        networks["threads"] = args.threads
    train_protocol_models(STUDY_PROTOCOL, args.rows, args.seeds, args.out,
                          options={row: networks for row, (method, _, _) in ROWS.items() if method in ("dl", "ddl")},
                          progress=shipping.progress_printer())
    return 0


if __name__ == "__main__":
    sys.exit(main())
