"""Moved to `constitutional.judge.soft_labels` (the judge layer). This alias keeps the old import path
working until every importer (eval/, some tests) names the new one; then delete this file."""

import sys

from constitutional.judge import soft_labels

sys.modules[__name__] = soft_labels
