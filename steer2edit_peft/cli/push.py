"""`steer2edit push`: upload an adapter to the Hub with a model card."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .arguments import add_command


def register(commands: Any) -> None:
    parser = add_command(
        commands,
        "push",
        "upload a saved adapter to the Hugging Face Hub with a model card and its heatmap",
        "Upload a saved Steer2Edit adapter, a model card (README.md) and the edit heatmap. Every push is a new "
        "commit; load an older one with PeftModel.from_pretrained(base, REPO_ID, revision=COMMIT).",
    )
    parser.add_argument("adapter", type=Path, help="adapter folder")
    parser.add_argument("repo_id", help="user/name on the Hub (HF_ENDPOINT chooses the server)")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument(
        "--results", type=Path, default=None, help="results.json of `steer2edit demo`/`eval` for the card"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..evaluation.suite import results_markdown
    from ..export.hub import push_adapter_folder

    results = results_markdown(args.results) if args.results else None
    commit = push_adapter_folder(
        args.adapter,
        args.repo_id,
        revision=args.revision,
        private=args.private or None,
        commit_message=args.commit_message,
        results=results,
    )
    print(f"pushed {args.adapter} to {commit.commit_url} (revision {commit.oid})")
