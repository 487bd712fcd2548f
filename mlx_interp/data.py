"""Text sources: files, folders, JSONL, Hugging Face datasets, and the offline default corpus.

Every source is an iterator of documents (strings) in a fixed order, so that the same
data always gives the same token stream (extraction resumes by skipping a known number of
context windows, and SAE runs are reproducible).

The default corpus is text that every install has offline: the docstrings of the Python
standard library and of the packages mlx-interp depends on (read with ``ast``, never
imported), the ``.rst``/``.md`` documentation files shipped inside those packages, and the
long descriptions (READMEs) of the installed distributions. Exact duplicates are dropped,
the order is fixed (package, file, line), and about 5% of the documents, chosen by a hash of
their text, form a held-out split. It is built once (a minute or two) and cached as JSONL in
the mlx-interp cache folder (``$MLX_INTERP_CACHE/corpus``, else ``~/.cache/mlx-interp/corpus``).
"""

from __future__ import annotations

import ast
import collections
import hashlib
import importlib.util
import json
import os
import re
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .io import write_text

# Version of the corpus recipe: bump it when the recipe changes, so caches are rebuilt.
# Prompts of the demo and the CLI's defaults: predictions, parity, heatmap, analysis.
PROMPTS = [
    "The capital of France is",
    "The Eiffel Tower is located in the city of",
    "def fibonacci(n):",
    "One, two, three, four,",
    "Water is made of hydrogen and",
]
HEATMAP_TEXT = "The Eiffel Tower is in Paris. The Colosseum is in Rome, and the Acropolis is in"
ANALYSIS_PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The bank of the river was muddy after the rain, so the bank closed early.",
]

CORPUS_VERSION = 1
# Packages whose docstrings and shipped docs join the standard library's (those missing
# on a machine are skipped; the README states the token count on the reference install).
CORPUS_PACKAGES = (
    "numpy",
    "torch",
    "transformers",
    "matplotlib",
    "huggingface_hub",
    "tokenizers",
    "safetensors",
    "gguf",
    "tqdm",
    "jinja2",
    "yaml",
    "requests",
    "packaging",
    "filelock",
    "fsspec",
    "sympy",
    "networkx",
    "pytest",
    "_pytest",
    "setuptools",
    "pip",
)
# Distributions whose long description (README) joins the corpus.
CORPUS_DISTRIBUTIONS = frozenset(
    "numpy torch transformers matplotlib huggingface-hub tokenizers safetensors gguf tqdm "
    "jinja2 pyyaml requests packaging filelock fsspec sympy networkx pytest setuptools pip "
    "mlx mlx-metal ruff pillow regex urllib3 certifi idna charset-normalizer".split()
)
MIN_DOC_CHARS = 40  # shorter docstrings ("Return x.") add little but separators
MAX_FILE_BYTES = 2_000_000
HELDOUT_EVERY = 20  # one document in 20 (by hash of its text) is held out
SPLITS = ("train", "heldout", "all")


# ------------------------------------------------------------------ splits
def is_heldout(text: str) -> bool:
    """Whether a document belongs to the held-out split (a fixed hash of its text)."""
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "little") % HELDOUT_EVERY == 0


def split_documents(docs: Iterable[str], split: str = "all") -> Iterator[str]:
    """Keep the documents of one split: 'train', 'heldout' (1 in 20, by text hash) or 'all'."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    for d in docs:
        if split == "all" or is_heldout(d) == (split == "heldout"):
            yield d


def splits_overlap(a: str | None, b: str | None) -> bool:
    """Whether two splits of the same data share documents ('all' shares with both)."""
    return a == b or "all" in (a, b)


@dataclass(frozen=True)
class DataSource:
    """Which documents a command reads: ``data`` (a ``read_documents`` source; None: the
    default corpus) and one ``split`` of it, by the same document hash as the default
    corpus (``is_heldout``): 'train', 'heldout' or 'all'.

    ``record()`` is what every artefact stores about its data: the source, the split and a
    fingerprint of the data (sha256 of the file bytes; of the .txt files, path and bytes, of
    a folder; the corpus version for the default corpus; the name of a Hugging Face
    dataset), so that an SAE's evaluation can tell whether it reads the SAE's training data.
    """

    data: str | None = None
    split: str = "train"

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split {self.split!r} is not one of {', '.join(SPLITS)}")
        if self.data is not None:
            object.__setattr__(self, "data", str(self.data))

    def check(self) -> DataSource:
        """Fail now, with a one-line error, on a missing, unreadable or empty source, or an
        empty split of it."""
        if self.data is not None:
            read_documents(self.data)
            if next(iter(self.documents()), None) is None:
                raise ValueError(
                    f"the {self.split} split of {self.data} holds no document (1 document in "
                    f"{HELDOUT_EVERY}, by a hash of its text, is held out): give more documents "
                    "or another --split"
                )
        return self

    def documents(self) -> Iterator[str]:
        """The documents of the split, in a fixed order."""
        if self.data is None:
            return default_corpus(self.split)
        return split_documents(read_documents(self.data), self.split)

    @property
    def name(self) -> str:
        if self.data is None:
            return f"default corpus v{CORPUS_VERSION}"
        path = Path(self.data).expanduser()
        return str(path.resolve()) if path.exists() else f"dataset {self.data}"

    def describe(self) -> str:
        """E.g. 'data.txt (held-out split)'."""
        split = {"train": "train split", "heldout": "held-out split", "all": "all documents"}
        return f"{self.name} ({split[self.split]})"

    def resume_id(self) -> str:
        """A short name of the data as it is now (path, size, mtime, split), for resume checks."""
        if self.data is None:
            return f"default corpus v{CORPUS_VERSION}, {self.split} split"
        path = Path(self.data).expanduser()
        if path.is_file():
            st = path.stat()
            return f"{path.resolve()} ({st.st_size} bytes, mtime {st.st_mtime_ns}), {self.split}"
        if path.is_dir():
            files = sorted(path.rglob("*.txt"))
            size = sum(f.stat().st_size for f in files)
            return f"{path.resolve()} ({len(files)} .txt files, {size} bytes), {self.split}"
        return f"dataset {self.data}, {self.split}"

    def fingerprint(self) -> str:
        if self.data is None:
            return f"default-corpus-v{CORPUS_VERSION}"
        path = Path(self.data).expanduser()
        h = hashlib.sha256()
        if path.is_file():
            _hash_file(h, path)
        elif path.is_dir():
            for f in sorted(p for p in path.rglob("*.txt") if p.is_file()):
                h.update(f.relative_to(path).as_posix().encode() + b"\0")
                _hash_file(h, f)
        else:
            return f"dataset:{self.data}"
        return "sha256:" + h.hexdigest()

    def record(self) -> dict:
        """{'data', 'split', 'fingerprint'}: what an artefact stores about its data."""
        return {"data": self.name, "split": self.split, "fingerprint": self.fingerprint()}

    def overlaps(self, record: dict | None) -> bool:
        """Whether this source shares documents with the data of ``record`` (a ``record()``
        stored by an artefact; False when it holds no fingerprint)."""
        if not record or not record.get("fingerprint"):
            return False
        return record["fingerprint"] == self.fingerprint() and splits_overlap(
            record.get("split"), self.split
        )

    def check_not_trained_on(self, trained_on: dict | None, allow: bool = False) -> None:
        """A one-line ValueError when this source overlaps the training data ``trained_on``
        (an SAE's record), unless ``allow``."""
        if allow or not self.overlaps(trained_on):
            return
        raise ValueError(
            f"the SAE was trained on the {trained_on['split']} split of {trained_on['data']}, "
            f"and {self.describe()} shares documents with it: use --split heldout (split= in "
            "Python), or --allow-train-data to score it on its training data anyway"
        )


def _hash_file(h, path: Path) -> None:
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise ValueError(f"cannot read data file {path} ({e.strerror})") from None


# ------------------------------------------------------------- user sources
def read_documents(source: str | os.PathLike, text_field: str = "text") -> Iterator[str]:
    """The documents of a data source, in a fixed order. Checks the source before yielding.

    - a ``.jsonl`` file: the ``text_field`` of each line;
    - a folder: every ``.txt`` file below it (sorted by path), one document each;
    - any other file: plain text, documents separated by blank lines if it has any,
      otherwise one document per non-empty line;
    - a name that is no path: a Hugging Face dataset from the local cache (needs the
      ``datasets`` package; nothing is downloaded).

    Raises a one-line ValueError for a missing, unreadable or empty source.
    """
    if not str(os.fspath(source)).strip():
        raise ValueError("the data source is empty; give a file, a folder or a dataset name")
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"data folder {path} holds no .txt files")
        for f in files:  # every file decodes, before anything runs
            _read(f)
        docs = (_read(p).strip() for p in files)
        return _nonempty((d for d in docs if d), path)
    if path.is_file():
        if path.suffix == ".jsonl":
            for _ in _jsonl_texts(path, text_field):  # every line parses, before anything runs
                pass
            return _nonempty(_jsonl_texts(path, text_field), path)
        return _nonempty(iter(_split_text(_read(path))), path)
    if _looks_like_path(str(source)):
        raise ValueError(f"data file {source} does not exist")
    return _nonempty(_hf_dataset_texts(str(source), text_field), source)


def _looks_like_path(s: str) -> bool:
    """A file name (with a suffix, or starting with / . ~) rather than a dataset name."""
    return s.startswith((".", "/", "~")) or Path(s).suffix != ""


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from None
    except OSError as e:
        raise ValueError(f"cannot read data file {path} ({e.strerror})") from None


def _not_utf8(path: Path, e: UnicodeDecodeError) -> ValueError:
    return ValueError(
        f"data file {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
        f"{e.start}); convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )


def _split_text(text: str) -> list[str]:
    """Blank-line separated paragraphs if the text has blank lines, else non-empty lines."""
    if re.search(r"\n[ \t]*\n", text):
        parts = re.split(r"\n[ \t]*\n", text)
    else:
        parts = text.splitlines()
    return [p.strip() for p in parts if p.strip()]


def _jsonl_texts(path: Path, field: str) -> Iterator[str]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x}); convert the "
                    "file to UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
                raise ValueError(f"{path}:{lineno}: no string field {field!r}")
            if obj[field].strip():
                yield obj[field]


def _hf_dataset_texts(name: str, field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"data file {name} does not exist (nor is the `datasets` package installed to "
            "read it as a Hugging Face dataset name)"
        ) from None
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as e:  # noqa: BLE001 - any failure: not cached, unknown name, offline
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"cannot load Hugging Face dataset {name!r} from the local cache: {first}"
        ) from None
    if field not in ds.column_names:
        raise ValueError(f"dataset {name!r} has no column {field!r} (it has {ds.column_names})")
    return (t for t in ds[field] if isinstance(t, str) and t.strip())


def _nonempty(docs: Iterator[str], where) -> Iterator[str]:
    """Check there is at least one document before anything else happens."""
    first = next(docs, None)
    if first is None:
        raise ValueError(f"data {where} holds no text")

    def chain():
        yield first
        yield from docs

    return chain()


# ----------------------------------------------------------- default corpus
def corpus_path() -> Path:
    from .sources import cache_root

    return cache_root() / "corpus" / f"default-v{CORPUS_VERSION}.jsonl"


def default_corpus(split: str = "train") -> Iterator[str]:
    """The offline default corpus (see the module docstring), built and cached on first use.

    split: 'train' (95%), 'heldout' (5%) or 'all'.
    """
    path = corpus_path()
    if not path.exists():
        build_default_corpus(path)
    return split_documents(_jsonl_texts(path, "text"), split)


def build_default_corpus(path: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Collect, deduplicate and write the default corpus (JSONL, one {"text", "source"} a line)."""
    path = Path(path) if path is not None else corpus_path()
    roots = [("stdlib", Path(sysconfig.get_paths()["stdlib"]))]
    for name in CORPUS_PACKAGES:
        root = _package_root(name)
        if root is not None:
            roots.append((name, root))
    seen: set[bytes] = set()
    lines: list[str] = []
    n_chars = 0
    for label, root in roots:
        if progress:
            print(f"corpus: reading {label} ({root})", flush=True)
        for source, text in _root_documents(label, root):
            key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if key in seen:
                continue
            seen.add(key)
            n_chars += len(text)
            lines.append(json.dumps({"text": text, "source": source}, ensure_ascii=False))
    for source, text in _distribution_descriptions():
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if key not in seen:
            seen.add(key)
            n_chars += len(text)
            lines.append(json.dumps({"text": text, "source": source}, ensure_ascii=False))
    write_text(path, "\n".join(lines) + "\n")
    if progress:
        print(f"corpus: {len(lines)} documents, {n_chars / 1e6:.1f} M characters -> {path}")
    return path


def _package_root(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


_SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "__pycache__", "_vendor", "vendored"}


def _root_documents(label: str, root: Path) -> Iterator[tuple[str, str]]:
    """(source, text) for every docstring of the .py files and every .rst/.md file under root."""
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts[:-1]) or not f.is_file():
            continue
        if f.suffix not in (".py", ".rst", ".md") or f.stat().st_size > MAX_FILE_BYTES:
            continue
        where = f"{label}/{rel.as_posix()}"
        if f.suffix == ".py":
            for lineno, doc in _docstrings(f):
                yield f"{where}:{lineno}", doc
        else:
            text = f.read_text(encoding="utf-8", errors="replace").strip()
            if len(text) >= MIN_DOC_CHARS:
                yield where, text


def _docstrings(path: Path) -> list[tuple[int, str]]:
    """The module, class and function docstrings of a source file, in source order."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError):
        return []
    out = []
    for node in _statements(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= MIN_DOC_CHARS:
                out.append((getattr(node, "lineno", 1), doc))
    out.sort(key=lambda t: t[0])
    return out


_BLOCKS = (ast.Module, ast.stmt, ast.ExceptHandler, ast.match_case)


def _statements(tree: ast.Module) -> Iterator[ast.AST]:
    """``ast.walk`` (breadth first, the same order) over the nodes that hold statements:
    definitions only occur there, and skipping every expression makes the default corpus's
    first build faster (39 s -> 33 s here, the same file byte for byte)."""
    todo = collections.deque([tree])
    while todo:
        node = todo.popleft()
        yield node
        todo.extend(c for c in ast.iter_child_nodes(node) if isinstance(c, _BLOCKS))


def _distribution_descriptions() -> Iterator[tuple[str, str]]:
    """The long descriptions (usually the README) of the installed distributions, by name."""
    from importlib.metadata import distributions

    found = {}
    for dist in distributions():
        name = (dist.metadata.get("Name") or "").lower().replace("_", "-")
        if name not in CORPUS_DISTRIBUTIONS:
            continue
        body = dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else None
        body = body or dist.metadata.get("Description") or ""
        if name and len(body.strip()) >= MIN_DOC_CHARS and name not in found:
            found[name] = body.strip()
    for name in sorted(found):
        yield f"dist/{name}", found[name]
