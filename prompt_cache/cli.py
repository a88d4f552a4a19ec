"""lsmseg-prompts: list the bank, show a class's prompts, and fill descriptions files through an LLM.

  lsmseg-prompts list
  lsmseg-prompts show --vocab ade150 --class "wall" [--prompts-per-class 5]
  lsmseg-prompts generate --vocab ade847 [--out FILE] [--limit N] [--workers 4]
  lsmseg-prompts generate --classes my_classes.txt --out my_descriptions.json

`generate` resumes: classes already in the output file are skipped, and the file is rewritten atomically
after every answer, so an interrupted run loses nothing. The LLM comes from LSMSEG_LLM_URL / _MODEL /
_API_KEY or --llm-url / --llm-model.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from tqdm import tqdm

from lsmseg.prompt_cache.errors import BankError, NotFoundError
from lsmseg.prompt_cache.llm import LLMAnswerError, LLMClient, LLMError
from lsmseg.prompt_cache.names import normalise_name
from lsmseg.prompt_cache.prompt_bank import ATTRIBUTES, PROMPT_VERSION, Bank
from lsmseg.prompt_cache.prompts import PromptBuilder
from lsmseg.prompt_cache.tokens import token_count


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (NotFoundError, BankError, LLMError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsmseg-prompts", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="bank vocabularies and how many classes are described")
    listing.set_defaults(run=_list)

    show = commands.add_parser("show", help="the prompts one class gets")
    show.add_argument("--vocab", required=True)
    show.add_argument("--class", dest="class_name", required=True)
    show.add_argument("--prompts-per-class", type=int, default=len(ATTRIBUTES))
    show.set_defaults(run=_show)

    generate = commands.add_parser("generate", help="write missing descriptions of a vocabulary with an LLM")
    source = generate.add_mutually_exclusive_group(required=True)
    source.add_argument("--vocab", help="a bank vocabulary (see `list`)")
    source.add_argument(
        "--classes", type=Path, help="your own class list: a JSON list of names, or one name per line"
    )
    generate.add_argument(
        "--out", type=Path, help="descriptions file (default: the bank's file; needed with --classes)"
    )
    generate.add_argument("--limit", type=int, help="describe at most N new classes in this run")
    generate.add_argument("--workers", type=int, default=4, help="requests in flight at once")
    generate.add_argument("--llm-url", help="overrides LSMSEG_LLM_URL")
    generate.add_argument("--llm-model", help="overrides LSMSEG_LLM_MODEL")
    generate.set_defaults(run=_generate)
    return parser


def _list(args: argparse.Namespace) -> int:
    bank = Bank()
    print(f"prompt version {bank.prompt_version}")
    print(f"{'vocabulary':<12} {'classes':>7} {'described':>9}")
    for name in bank.vocabulary_names():
        classes = bank.vocabulary(name)
        described = sum(name in bank for name in classes)
        print(f"{name:<12} {len(classes):>7} {described:>9}")
    return 0


def _show(args: argparse.Namespace) -> int:
    bank = Bank()
    classes = bank.vocabulary(args.vocab)
    wanted = normalise_name(args.class_name)
    if wanted not in classes:
        close = difflib.get_close_matches(wanted, classes, n=3)
        hint = f"; did you mean {', '.join(repr(name) for name in close)}?" if close else ""
        print(f"error: {args.class_name!r} is not a class of {args.vocab}{hint}", file=sys.stderr)
        return 2
    built = PromptBuilder(bank, prompts_per_class=args.prompts_per_class).build([wanted])
    print(f"{wanted}  (class {classes.index(wanted)} of {args.vocab}, source: {built.sources[0]})")
    for index, prompt in enumerate(built.prompts[0]):
        from_bank = built.sources[0] == "bank" and index < len(ATTRIBUTES)
        label = ATTRIBUTES[index] if from_bank else f"prompt {index}"
        print(f"  {label:<9} [{token_count(prompt):>2} tokens] {prompt}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    bank = Bank()
    if args.classes is not None:
        if args.out is None:
            raise BankError("--classes needs --out: the descriptions file to write")
        classes, label = _read_class_list(args.classes), str(args.classes)
    else:
        classes, label = bank.vocabulary(args.vocab), args.vocab
    out = Path(args.out) if args.out else Path(str(bank.description_path(args.vocab)))
    described = _read_descriptions(out)
    # Skip what this file or any bank file already describes: the bank merges all of them.
    todo = [name for name in classes if name not in described and name not in bank]
    if args.limit is not None:
        todo = todo[: args.limit]
    if not todo:
        print(f"{out}: all {len(classes)} classes of {label} are already described")
        return 0
    llm = _llm_from(args)
    failed: dict[str, str] = {}
    fatal: LLMError | None = None
    new = 0
    with llm, ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        queue = iter(todo)
        running: dict[Future, str] = {}
        with tqdm(total=len(todo), desc=f"describing {label}", unit="class", disable=None) as bar:
            while True:
                while fatal is None and len(running) < max(1, args.workers):
                    name = next(queue, None)
                    if name is None:
                        break
                    running[pool.submit(llm.describe, name)] = name
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    bar.update()
                    try:
                        described[name] = future.result()
                    except LLMAnswerError as exc:
                        failed[name] = str(exc)
                        continue
                    except LLMError as exc:
                        fatal = fatal or exc  # stop submitting; let the requests in flight finish
                        continue
                    _write_descriptions(out, described, classes)
                    new += 1
    covered = sum(name in described or name in bank for name in classes)
    print(
        f"{out}: {new} new, {len(failed)} rejected; {covered} of {len(classes)} classes of {label} "
        f"described (bank included)"
    )
    for name, reason in list(failed.items())[:10]:
        print(f"  rejected {name!r}: {reason}", file=sys.stderr)
    if fatal is not None:
        print(f"error: stopped early: {fatal}", file=sys.stderr)
        return 1
    return 0


def _read_class_list(path: Path) -> list[str]:
    """Normalised, de-duplicated class names from a JSON list or a text file with one name per line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BankError(f"cannot read the class list {path}: {exc.strerror}") from exc
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BankError(f"{path} is not a valid JSON list: {exc}") from exc
        if not all(isinstance(name, str) for name in names):
            raise BankError(f"{path}: every entry of the JSON list must be a class name (a string)")
    else:
        names = text.splitlines()
    classes = list(dict.fromkeys(normalise_name(name) for name in names if name.strip()))
    if not classes:
        raise BankError(f"{path} holds no class names")
    return classes


def _llm_from(args: argparse.Namespace) -> LLMClient:
    environ = dict(os.environ)
    if args.llm_url:
        environ["LSMSEG_LLM_URL"] = args.llm_url
    if args.llm_model:
        environ["LSMSEG_LLM_MODEL"] = args.llm_model
    llm = LLMClient.from_env(environ)
    if llm is None:
        raise LLMError(
            "no LLM is configured: set LSMSEG_LLM_URL and LSMSEG_LLM_MODEL (and LSMSEG_LLM_API_KEY if the "
            "server needs one), or pass --llm-url and --llm-model"
        )
    return llm


def _read_descriptions(path: Path) -> dict[str, list[str]]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("prompt_version") != PROMPT_VERSION or tuple(data.get("attributes", ())) != ATTRIBUTES:
        raise BankError(f"{path} holds prompt version {data.get('prompt_version')!r}, not {PROMPT_VERSION!r}")
    return {normalise_name(name): sentences for name, sentences in data.get("descriptions", {}).items()}


def _write_descriptions(path: Path, described: dict[str, list[str]], order: list[str]) -> None:
    """Atomically replace `path`: classes in vocabulary order, then any others the file already had."""
    known = set(order)
    ranked = [name for name in order if name in described] + [name for name in described if name not in known]
    document = {
        "prompt_version": PROMPT_VERSION,
        "attributes": list(ATTRIBUTES),
        "descriptions": {name: described[name] for name in ranked},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as handle:
        json.dump(document, handle, ensure_ascii=False, indent=1)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)


if __name__ == "__main__":
    sys.exit(main())
