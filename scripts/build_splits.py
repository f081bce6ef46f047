"""Build the recorded red-team train/eval split (see `constitutional.splits`) and the bundled
over-refusal set's file; run once, commit the files. Needs the guard extra (MiniLM).

    .venv/bin/python scripts/build_splits.py
"""

from __future__ import annotations

import json

from constitutional.backends.encoders import MiniLMEncoder
from constitutional.generate import load_prompts
from constitutional.jsonl import write_jsonl
from constitutional.prompts import RED_TEAM_SETS
from constitutional.splits import EVAL, RECORD, TRAIN, build_split, data_dir, file_sha256


def main() -> None:
    rows = [dict(r, source=name) for name in RED_TEAM_SETS for r in load_prompts(f"builtin:{name}")]
    embeddings = MiniLMEncoder().encode([r["prompt"] for r in rows])
    train, evaluation, record = build_split(rows, embeddings)
    out = data_dir()
    for name, part in ((TRAIN, train), (EVAL, evaluation)):
        write_jsonl(out / f"{name}.jsonl", part)
        record[f"{name}.jsonl"] = file_sha256(out / f"{name}.jsonl")
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
