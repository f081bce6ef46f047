"""Moved to `constitutional.judge.rating` (the judge layer). This alias keeps the old import path
working until every importer (eval/, some tests) names the new one; then delete this file."""

import sys

from constitutional.judge import rating

sys.modules[__name__] = rating
