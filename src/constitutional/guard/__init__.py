"""Constitutional classifiers: synthetic data from the constitution, cascaded classifiers and a guard proxy."""
