"""Refit the refusal instrument from the bundled RBR gold and XSTest data and print its held-out report.

    PYTHONPATH=src python benchmarks/fit_refusal_instrument.py [--out PATH]

Writes src/constitutional/eval/refusal/instrument.json unless --out says otherwise. The work is
in `constitutional.eval.refusal.fit` (also runnable as `python -m constitutional.eval.refusal.fit`).
"""

from constitutional.eval.refusal.fit import main

if __name__ == "__main__":
    main()
