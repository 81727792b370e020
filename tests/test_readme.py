"""The README's examples, run or checked against the code as it is.

Conventions the README follows (say so there too when changing them):

* Every ```sh block under "## Files and versions" (up to the next "## " heading) is run, in
  README order, each with ``bash -e`` in one fresh real mount: the working directory is the
  mount's root, ``HOME`` is a fresh folder outside the mount (so ``~/q3.txt`` is a local file),
  and ``PATH`` starts with the directory of this Python, so ``relayfs`` is the CLI under test.
  stderr goes to the same pipe as stdout.
* A ```text block that directly follows such a block (blank lines between are fine) is
  what that block prints, exactly, except that ``...`` stands for any text within one line,
  curly quotes (which coreutils use in some locales) equal straight ones, and trailing blank
  space is ignored.
* The same holds for the "## Python SDK" section, whose ```python blocks run with this Python
  in ``HOME`` with the test mount's settings as ``RELAYFS_*`` variables (what
  ``relayfs.open()`` reads), and whose ```sh blocks run in the mount's root as above. Its table
  names only real ``Client`` methods with their real parameters, every public method, and
  every field of what ``put``, ``versions`` and ``jobs`` return.
* Every ``relayfs SUBCOMMAND ...`` in a code block or a code span anywhere in the README names a
  subcommand that ``relayfs --help`` lists, and only options that ``relayfs SUBCOMMAND --help``
  lists (checked against the CLI as it is when the test runs).
* The configuration table lists every field of ``Config`` once, with its ``RELAYFS_*`` variable,
  its ``relayfs mount`` flag when (and only when) there is one, and the default the code
  computes (with the Storj preset's where the cell gives one after ``Storj:``).
* Every ```toml block is a valid config file for ``load_config``.
* The troubleshooting section's dead-mount message is what ``relayfs mount`` prints for a dead
  mount, and its cure (``relayfs umount``, mount again) works.
* The set-up section holds exactly the two set-up commands; links to ``#headings`` resolve.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from mount import Mount, poll, relayfs

from relayfs.config import Config, load_config, parse_size

README = Path(__file__).resolve().parent.parent / "README.md"
BIN = str(Path(sys.executable).parent)


# -- reading the README -------------------------------------------------------------------
@dataclasses.dataclass
class Block:
    lang: str
    text: str
    section: str  # the enclosing "## " heading
    line: int  # 1-based line of the opening fence


def parse(text: str) -> tuple[list[Block], list[tuple[str, str, int]]]:
    """Code blocks, and prose lines (section, line, number) outside them."""
    blocks: list[Block] = []
    prose: list[tuple[str, str, int]] = []
    section = ""
    fence: tuple[str, list[str], int] | None = None
    for n, line in enumerate(text.splitlines(), 1):
        if fence is not None:
            if line.startswith("```"):
                blocks.append(Block(fence[0], "\n".join(fence[1]) + "\n", section, fence[2]))
                fence = None
            else:
                fence[1].append(line)
            continue
        if line.startswith("```"):
            fence = (line[3:].strip(), [], n)
        else:
            if line.startswith("## "):
                section = line[3:].strip()
            prose.append((section, line, n))
    assert fence is None, "README: a code fence is never closed"
    return blocks, prose


@cache
def readme() -> tuple[str, list[Block], list[tuple[str, str, int]]]:
    text = README.read_text()
    blocks, prose = parse(text)
    return text, blocks, prose


def examples(section: str) -> list[tuple[Block, Block | None]]:
    """The ```sh and ```python blocks of a section, each with the ```text block right after
    it, if any."""
    _, blocks, _ = readme()
    text_lines = README.read_text().splitlines()
    out: list[tuple[Block, Block | None]] = []
    for i, b in enumerate(blocks):
        if b.section != section or b.lang not in ("sh", "python"):
            continue
        nxt = blocks[i + 1] if i + 1 < len(blocks) else None
        expected = None
        if nxt is not None and nxt.lang == "text":
            end = b.line + b.text.count("\n") + 1  # 1-based line of the closing fence of b
            between = text_lines[end : nxt.line - 1]
            if all(not l.strip() for l in between):
                expected = nxt
        out.append((b, expected))
    return out


def matches(expected: str, got: str) -> bool:
    def norm(s: str) -> list[str]:  # coreutils quote 'x' as ‘x’ in some locales
        return s.replace("\u2018", "'").replace("\u2019", "'").rstrip().splitlines()

    want, have = norm(expected), norm(got)
    if len(want) != len(have):
        return False
    for w, h in zip(want, have):
        pattern = ".*".join(re.escape(part) for part in w.rstrip().split("..."))
        if not re.fullmatch(pattern, h.rstrip()):
            return False
    return True


# -- the namespace examples, in a real mount ------------------------------------------------
def example_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAYFS_", "XDG_")) and k not in ("VIMINIT", "EXINIT")}
    env.update(HOME=str(home), PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", LC_ALL="C.UTF-8", **extra)
    return env


def run_examples(section: str, mnt: Mount, env: dict[str, str]) -> int:
    """Run a section's examples in order (sh in the mount's root, python in HOME); check
    each against the ```text block that follows it. Returns how many ran."""
    pairs = examples(section)
    for block, expected in pairs:
        if block.lang == "sh":
            cmd, cwd = ["bash", "-e", "-c", block.text], str(mnt.path)
        else:
            cmd, cwd = [sys.executable, "-c", block.text], env["HOME"]
        done = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
        where = f"README line {block.line}"
        assert done.returncode == 0, f"{where}: exited {done.returncode}:\n{block.text}\n--- output:\n{done.stdout}"
        if expected is not None:
            assert matches(expected.text, done.stdout), (
                f"{where}: output differs\n--- README shows:\n{expected.text}--- the block printed:\n{done.stdout}"
            )
    return len(pairs)


def test_files_and_versions_examples_run_as_shown(mnt: Mount, tmp_path: Path) -> None:
    pairs = examples("Files and versions")
    assert len(pairs) >= 10, "the namespace section lost its examples"
    assert all(e is not None for _, e in pairs), "every namespace example shows its output"
    home = tmp_path / "home"
    home.mkdir()
    run_examples("Files and versions", mnt, example_env(home))


def test_sdk_example_runs_as_shown_and_the_mount_sees_it(mnt: Mount, tmp_path: Path) -> None:
    """The SDK example with the settings the mount has (as RELAYFS_* variables), then the
    mount-side example in the mount's root."""
    home = tmp_path / "home"
    home.mkdir()
    env = example_env(home, RELAYFS_L3=mnt.l3, RELAYFS_S3_ENDPOINT=str(mnt.endpoint))
    assert [b.lang for b, _ in examples("Python SDK")] == ["python", "sh"]
    assert run_examples("Python SDK", mnt, env) == 2
    assert (home / ".cache" / "relayfs").is_dir()  # the SDK kept its own cache, under HOME
    assert all(p.name.endswith("-sdk") for p in (home / ".cache" / "relayfs").iterdir())


# -- relayfs commands named anywhere ------------------------------------------------------
_CMD = re.compile(r"(?:^|(?<=[\s`(]))(?:sudo[ \t]+)?(?:[\w.~/-]*/)?relayfs[ \t]+(?P<rest>[^\n`]*)")
_STOP = {"#", "&&", "||", "|", ";", ">", ">>", "<"}


@cache
def cli_help(*words: str) -> str:
    done = subprocess.run([sys.executable, "-m", "relayfs", *words, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"relayfs {' '.join(words)} --help exited {done.returncode}: {done.stderr}"
    return done.stdout


def help_commands(text: str) -> set[str]:
    if "Commands:" not in text:
        return set()
    body = text.split("Commands:", 1)[1]
    return {m.group(1) for m in re.finditer(r"^  ([a-z][\w-]*)", body, re.M)}


def help_options(text: str) -> set[str]:
    body = text.split("Options:", 1)[1] if "Options:" in text else ""
    body = body.split("Commands:", 1)[0]
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", body))


def code_snippets() -> list[tuple[str, int]]:
    """Code the README shows: lines of code blocks (not python/toml) and inline code spans."""
    _, blocks, prose = readme()
    out: list[tuple[str, int]] = []
    for b in blocks:
        if b.lang in ("python", "toml"):
            continue
        for i, line in enumerate(b.text.splitlines(), 1):
            out.append((line, b.line + i))
    for _, line, n in prose:
        out += [(m.group(1), n) for m in re.finditer(r"`([^`]+)`", line)]
    return out


def commands_in_readme() -> list[tuple[list[str], int]]:
    found = []
    for snippet, n in code_snippets():
        for m in _CMD.finditer(snippet):
            words = []
            for w in m.group("rest").split():
                if w in _STOP or w.startswith("#"):
                    break
                words.append(w)
            if words:
                found.append((words, n))
    return found


def test_relayfs_commands_in_the_readme_exist() -> None:
    found = commands_in_readme()
    used = set()
    problems = []
    for words, n in found:
        path: list[str] = []
        rest = list(words)
        while rest and rest[0] in help_commands(cli_help(*path)):
            path.append(rest.pop(0))
        if not path and re.fullmatch(r"[A-Z]+", rest[0]):
            continue  # `relayfs COMMAND --help`: a placeholder, not a command
        if not path and not rest[0].startswith("-"):
            problems.append(f"line {n}: `relayfs {' '.join(words)}`: no such subcommand")
            continue
        if path:
            used.add(" ".join(path))
        options = help_options(cli_help(*path))
        for w in rest:
            opt = w.strip("[]()").split("=", 1)[0]
            if re.fullmatch(r"--?[A-Za-z][\w-]*", opt) and opt not in options:
                problems.append(f"line {n}: `relayfs {' '.join(words)}`: relayfs {' '.join(path)} has no option {opt}")
    assert not problems, "\n".join(problems)
    # the README shows every subcommand at least once
    missing = help_commands(cli_help()) - {u.split()[0] for u in used}
    assert not missing, f"subcommands the README never shows: {sorted(missing)}"


# -- the two set-up commands ---------------------------------------------------------------
def test_set_up_is_the_two_commands() -> None:
    _, blocks, _ = readme()
    setup = [b.text.strip() for b in blocks if b.section == "Set-up: two commands"]
    assert setup == [
        "scripts/setup.sh && mkdir -p ~/RelayFS && .venv/bin/relayfs mount ~/RelayFS",
        "scripts/test.sh",
    ]
    root = README.parent
    assert os.access(root / "scripts" / "setup.sh", os.X_OK) and os.access(root / "scripts" / "test.sh", os.X_OK)


# -- the configuration reference -----------------------------------------------------------
def config_rows() -> list[list[str]]:
    text, _, _ = readme()
    section = text.split("\n## Configuration reference\n", 1)[1].split("\n## ", 1)[0]
    lines = [l for l in section.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:4] == ["setting", "environment", "`relayfs mount` flag", "default"], header
    return [[c.strip() for c in re.split(r"(?<!\\)\|", l.strip().strip("|"))] for l in lines[2:]]


def spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


def shown_value(field: dataclasses.Field, cell: str, home: Path):  # type: ignore[type-arg]
    """The value a default cell (or its part after ``Storj:``) stands for."""
    found = spans(cell)
    if not found:
        assert cell.strip().startswith("none"), f"{field.name}: default {cell!r} is neither a value nor none"
        return None
    raw = found[0]
    if raw == '""':
        return ""
    if field.name in ("part_size", "l1_bytes", "l2_bytes"):
        return parse_size(raw)
    if field.name in ("transfer_threads", "upload_concurrency"):
        return int(raw)
    if field.type in ("float",) or isinstance(field.default, float):
        return float(raw)
    if raw in ("true", "false"):
        return raw == "true"
    return raw.replace("~", str(home), 1) if raw.startswith(("~", "file://~")) else raw


def test_configuration_table_lists_every_setting_with_its_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    for name in list(os.environ):
        if name.startswith("RELAYFS_") or name.startswith("XDG_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    plain = load_config(environ={})
    storj = load_config(flags={"l3": "storj://bucket"}, environ={})
    fields = {f.name: f for f in dataclasses.fields(Config)}
    rows = config_rows()
    names = [spans(r[0])[0] for r in rows]
    assert sorted(names) == sorted(fields), f"table: {names}\nConfig: {sorted(fields)}"
    mount_options = help_options(cli_help("mount"))
    for row in rows:
        name = spans(row[0])[0]
        field = fields[name]
        assert spans(row[1]) == [f"RELAYFS_{name.upper()}"], row
        flag = "--" + name.replace("_", "-")
        if row[2].startswith("none"):
            assert flag not in mount_options, f"{name}: the README says no flag, but relayfs mount has {flag}"
        else:
            assert spans(row[2])[:1] == [flag] and flag in mount_options, f"{name}: {row[2]!r}; relayfs mount has no {flag}"
        default, _, storj_cell = row[3].partition("Storj:")
        got = getattr(plain, name)
        if name == "cache_dir":  # derived: `~/.cache/relayfs/<l3>`, ... `NAME` for `URL`
            shown = spans(default)
            prefix = shown[0].split("<", 1)[0].replace("~", str(home), 1)
            assert str(got).startswith(prefix) and "<" in shown[0], (row, got)
            example, url = shown[-2:]
            assert load_config(flags={"l3": url}, environ={}).cache_dir == Path(prefix) / example, row
            continue
        want = shown_value(field, default, home)
        assert want == got, f"{name}: the README says {want!r}, the code {got!r}"
        if storj_cell:
            want = shown_value(field, storj_cell, home)
            assert want == getattr(storj, name), f"{name} with Storj: the README says {want!r}, the code {getattr(storj, name)!r}"


def test_toml_examples_are_valid_config_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, blocks, _ = readme()
    tomls = [b for b in blocks if b.lang == "toml"]
    assert tomls
    monkeypatch.setenv("HOME", str(tmp_path))
    for i, b in enumerate(tomls):
        path = tmp_path / f"example{i}.toml"
        path.write_text(b.text)
        path.chmod(0o600)
        cfg = load_config(path, environ={})
        assert cfg.l3.startswith(("s3://", "storj://", "file://")), b.text
        if "storj" in b.text:
            assert cfg.l3_provider == "storj" and cfg.s3_endpoint == "https://gateway.storjshare.io"


def test_the_instance_name_shown_for_the_system_service() -> None:
    done = subprocess.run(["systemd-escape", "--path", "/mnt/data"], capture_output=True, text=True)
    assert done.stdout.strip() == "mnt-data"
    text, _, _ = readme()
    assert "relayfs@mnt-data.service" in text and "/etc/relayfs/mnt-data.toml" in text
    unit = (README.parent / "systemd" / "relayfs@.service").read_text()
    assert "/etc/relayfs/%i.toml" in unit


# -- troubleshooting: a dead mount ---------------------------------------------------------
def test_dead_mount_message_and_cure(mnt: Mount) -> None:
    _, blocks, _ = readme()
    quoted = [b.text.strip() for b in blocks if b.section == "Troubleshooting" and "dead mount" in b.text]
    assert len(quoted) == 1
    (mnt.path / "kept.txt").write_text("kept\n")
    pid = mnt.pid()
    os.kill(pid, signal.SIGKILL)
    poll(lambda: not Path(f"/proc/{pid}").exists(), "the daemon to die")
    with pytest.raises(OSError) as e:
        os.stat(mnt.path)
    assert "Transport endpoint is not connected" in str(e.value)
    done = relayfs("mount", *mnt.args(), check=False)
    assert done.returncode != 0
    assert done.stderr.strip() == quoted[0].replace("/home/you/RelayFS", str(mnt.path))
    relayfs("umount", str(mnt.path))  # what the README says to run
    mnt.start()
    assert (mnt.path / "kept.txt" / "v1").read_text() == "kept\n"
    mnt.expect_error(r"dead mount")


# -- the SDK reference ---------------------------------------------------------------------
def test_sdk_table_matches_the_client() -> None:
    import ast
    import inspect

    import relayfs
    from relayfs import errors, sdk

    text, _, _ = readme()
    section = text.split("\n## Python SDK\n", 1)[1].split("\n## ", 1)[0]
    rows = [l for l in section.splitlines() if l.startswith("| `fs.")]
    assert rows
    returns = {"put": sdk.Put, "rollback": sdk.Put, "versions": sdk.Version, "jobs": sdk.Job}
    shown = set()
    for row in rows:
        call, desc = [c.strip() for c in row.strip("|").split("|", 1)]
        m = re.fullmatch(r"`fs\.(\w+)\((.*)\)`", call)
        assert m, row
        name, args = m.group(1), m.group(2)
        shown.add(name)
        method = getattr(sdk.Client, name, None)
        assert callable(method), f"Client has no method {name}"
        params = dict(list(inspect.signature(method).parameters.items())[1:])
        given = [a.strip() for a in args.split(",") if a.strip()]
        assert [a.split("=")[0] for a in given] == list(params), f"fs.{name}: README ({args}) vs code {list(params)}"
        for a in given:
            if "=" in a:
                arg, default = a.split("=", 1)
                assert params[arg].default == ast.literal_eval(default), f"fs.{name}: default of {arg}"
        attrs = re.findall(r"`\.(\w+)`", desc)
        if name in returns and name != "rollback":
            assert set(attrs) == {f.name for f in dataclasses.fields(returns[name])}, f"fs.{name}: {attrs}"
    public = {n for n, v in vars(sdk.Client).items() if not n.startswith("_") and inspect.isfunction(v)} - {"close"}
    assert shown == public, f"README shows {sorted(shown)}, Client has {sorted(public)}"
    # the names the prose uses
    assert callable(relayfs.open) and issubclass(relayfs.JobsFailed, Exception)
    for found in re.findall(r"`relayfs\.errors\.(\w+)`|`(NotFound|IsADirectory)`", section):
        for n in found:
            if n:
                assert issubclass(getattr(errors, n), errors.RelayError), n
    for kw in re.findall(r"relayfs\.open\(((?:\w+=)[^)]*)\)", section):
        for key in re.findall(r"(\w+)=", kw):
            assert key in {f.name for f in dataclasses.fields(Config)}, f"relayfs.open({key}=...): no such setting"


def test_links_within_the_readme_resolve() -> None:
    _, _, prose = readme()
    slugs = set()
    for _, line, _ in prose:  # headings outside code blocks
        m = re.match(r"^#{1,6} (.+)$", line)
        if m:
            slugs.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    links = {m.group(1) for _, line, _ in prose for m in re.finditer(r"\]\(#([^)]+)\)", line)}
    assert links and links <= slugs, f"links to missing headings: {sorted(links - slugs)}"
