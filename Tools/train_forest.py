"""Recipe of the shipped `forest` model `forest_t1_x4`: train on the ICBM 2009c T1 template with the method's
default options, evaluate on Colin27, write the model file and its card, register it.

    python Tools/train_forest.py                  # retrain and ship
    python Tools/train_forest.py --evaluate-only  # re-score the shipped file and rewrite its card
"""
import sys

import classic

if __name__ == "__main__":
    sys.exit(classic.main("forest"))
