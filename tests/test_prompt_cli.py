"""lsmseg-prompts: generate with resume against a local chat-completions server, show, list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prompt_fake_llm import FakeLLM, Reply, chat_body, good_content

from lsmseg.prompt_cache import ATTRIBUTES, PROMPT_VERSION, Bank
from lsmseg.prompt_cache.cli import main

BANK = Bank()
# A user's own vocabulary, in a file; generate skips what the bank already describes ("cat").
OWN_CLASSES = ["weather vane", "lava lamp", "espresso machine", "cat", "snow globe", "bird bath", "sundial"]
UNDESCRIBED = [name.lower() for name in OWN_CLASSES if name not in BANK]


@pytest.fixture
def classes_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_classes.txt"
    path.write_text("\n".join(OWN_CLASSES) + "\n\n", encoding="utf-8")
    return path


@pytest.fixture
def fake_llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    server = FakeLLM()
    monkeypatch.setenv("LSMSEG_LLM_URL", server.url)
    monkeypatch.setenv("LSMSEG_LLM_MODEL", "test-model")
    yield server
    server.close()


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_generate_writes_new_classes_and_resumes(
    fake_llm: FakeLLM, tmp_path: Path, classes_file: Path, capsys
) -> None:
    assert len(UNDESCRIBED) == len(OWN_CLASSES) - 1
    out = tmp_path / "mine.json"
    arguments = ["--classes", str(classes_file), "--out", str(out), "--limit", "3", "--workers", "2"]
    assert main(["generate", *arguments]) == 0
    document = read(out)
    assert document["prompt_version"] == PROMPT_VERSION
    assert document["attributes"] == list(ATTRIBUTES)
    assert list(document["descriptions"]) == UNDESCRIBED[:3]  # vocabulary order, whatever the answer order
    first = UNDESCRIBED[0]
    assert document["descriptions"][first][0].startswith(f"A {first.split(',')[0]} is a table-sized")
    assert sorted(fake_llm.subjects()) == sorted(name.split(",")[0] for name in UNDESCRIBED[:3])
    assert "3 new, 0 rejected" in capsys.readouterr().out

    # Second run as a real process with pipes (no tty): it skips the three and asks for the next two.
    env = {**os.environ, "LSMSEG_LLM_URL": fake_llm.url, "LSMSEG_LLM_MODEL": "test-model"}
    command = [sys.executable, "-m", "lsmseg.prompt_cache.cli", "generate", "--classes", classes_file]
    command += ["--limit", "2"]
    done = subprocess.run(
        [*command, "--out", out],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "2 new, 0 rejected" in done.stdout
    assert "\r" not in done.stderr  # no progress bar redrawn into a pipe
    assert list(read(out)["descriptions"]) == UNDESCRIBED[:5]
    assert sorted(fake_llm.subjects()[3:]) == sorted(name.split(",")[0] for name in UNDESCRIBED[3:5])


def test_generate_keeps_progress_and_fails_clearly_when_the_llm_breaks(
    fake_llm: FakeLLM, tmp_path: Path, classes_file: Path, capsys
) -> None:
    out = tmp_path / "mine.json"
    broken = Reply(status=500, body="boom", headers={"Retry-After": "0"})
    good = Reply(body=chat_body(good_content("something")))
    fake_llm.script.extend([good, Reply(body="{}"), *[broken] * 4])
    code = main(["generate", "--classes", str(classes_file), "--out", str(out), "--workers", "1"])
    captured = capsys.readouterr()
    assert code == 1
    assert f"rejected {UNDESCRIBED[1]!r}" in captured.err
    assert "stopped early" in captured.err and "failed 4 times; last: HTTP 500" in captured.err
    assert list(read(out)["descriptions"]) == UNDESCRIBED[:1]
    assert len(fake_llm.requests) == 6  # nothing was asked after the fatal error


def test_generate_without_an_llm_is_a_clear_error(
    tmp_path: Path, classes_file: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.delenv("LSMSEG_LLM_URL", raising=False)
    assert main(["generate", "--classes", str(classes_file), "--out", str(tmp_path / "x.json")]) == 2
    assert "no LLM is configured: set LSMSEG_LLM_URL and LSMSEG_LLM_MODEL" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_generate_reads_json_class_lists_and_refuses_bad_ones(tmp_path: Path, capsys) -> None:
    listed = tmp_path / "classes.json"
    listed.write_text(json.dumps(["cat", "Dog ", "cat"]), encoding="utf-8")
    out = tmp_path / "out.json"
    # Both are in the bank: nothing to ask, so no LLM is needed.
    assert main(["generate", "--classes", str(listed), "--out", str(out)]) == 0
    assert f"all 2 classes of {listed} are already described" in capsys.readouterr().out
    bad = (("[1, 2]", "must be a class name"), ('["a"', "not a valid JSON list"), ("\n", "no class names"))
    for text, message in bad:
        listed.write_text(text, encoding="utf-8")
        assert main(["generate", "--classes", str(listed), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert main(["generate", "--classes", str(listed)]) == 2
    assert "--classes needs --out" in capsys.readouterr().err
    assert main(["generate", "--classes", str(tmp_path / "missing.txt"), "--out", str(out)]) == 2
    assert "cannot read the class list" in capsys.readouterr().err


def test_show_prints_the_prompts_of_one_class(capsys) -> None:
    assert main(["show", "--vocab", "ade847", "--class", " Building, Edifice", "--prompts-per-class=2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("building, edifice  (class 1 of ade847, source: ")
    assert len(out.strip().splitlines()) == 3
    assert main(["show", "--vocab", "voc20", "--class", "aeroplan"]) == 2
    assert "did you mean 'aeroplane'" in capsys.readouterr().err


def test_list_counts_classes_per_vocabulary(capsys) -> None:
    assert main(["list"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["ade847"][0] == "847"
    assert rows["voc20"][0] == "20"


def test_list_and_show_cover_every_class_of_the_large_benchmarks(capsys) -> None:
    assert main(["list"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["ade847"] == ["847", "847"] and rows["pc459"] == ["459", "459"]
    for vocabulary in ("ade847", "pc459"):
        for index, name in enumerate(BANK.vocabulary(vocabulary)):
            assert main(["show", "--vocab", vocabulary, "--class", name]) == 0
            out = capsys.readouterr().out
            assert out.startswith(f"{name}  (class {index} of {vocabulary}, source: bank)"), out[:200]
            assert len(out.strip().splitlines()) == 1 + len(ATTRIBUTES)


def test_generate_has_nothing_left_to_ask_for_a_fully_described_vocabulary(tmp_path: Path, capsys) -> None:
    assert main(["generate", "--vocab", "pc459", "--out", str(tmp_path / "pc459.json")]) == 0
    assert "all 459 classes of pc459 are already described" in capsys.readouterr().out
