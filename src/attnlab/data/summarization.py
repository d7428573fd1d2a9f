"""Document -> summary pairs for fine-tuning a causal LM (GPT-2) to summarise, as a LightningDataModule: SciTLDR,
DialogSum, CNN/DailyMail or any JSON Lines files.

Each split is one .jsonl[.gz] file under data_dir, named in `splits` with the field that holds the source (a string,
or a list of sentences joined with " ") and the fields that hold references (each a string or a list of strings;
every non-empty one, in order, is a reference: SciTLDR's test rows have ~3). Splits: train, val, test_<name>.

A row is one causal-LM sequence, the prompt then the summary (template = prefix + "{source}" + suffix):
    prompt ids  = enc(prefix) + enc(source)[:room] + enc(suffix)
    summary ids = enc(" " + reference)[:max_summary_len - 1] + [eos]
room = max_len - reserved_tokens - max_summary_len - len(prefix ids) - len(suffix ids): the summary always keeps
max_summary_len tokens of room, so generating one never runs past max_len; a longer source loses its end
(truncate=false: an error instead). reserved_tokens are positions the model itself puts before every prompt: the
virtual tokens of prompt and prefix tuning (conf/data/scitldr.yaml takes peft.num_virtual_tokens), which would
otherwise push a long prompt past GPT-2's position table.
The three pieces are encoded apart, so every prompt ends in exactly the suffix's tokens whatever the source's last
word; `preprocessing().prompt` builds prompts the same way at generation time. The summary starts with a space since
GPT-2's BPE sees "TL;DR: word" as " word". Training learns the first reference; val and test batches carry them all.

No disk cache: a few thousand rows encode in seconds (SciTLDR-A train: ~2 s on 2 busy cores) and stay in memory.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from attnlab.data.loading import make_loader
from attnlab.data.sources import open_text
from attnlab.data.tokenizers import Tokenizer, TokenizerRecipe
from attnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ARTIFACT_DIR = "tokenizer"  # in the run directory: the tokenizer, and DATA_FILE beside it
DATA_FILE = "summarization.json"  # the test set names and the template, so facts() needs no data files
SPLIT_KEYS = ("file", "source", "targets")
IGNORE = -100  # the label of a position that is not scored (torch's cross_entropy ignore_index)

# lead(): a sentence ends at . ! or ? followed by space and a capital, digit, opening quote or "#" (DialogSum's
# "#Person2#"), and at every line break; a "sentence" ending in a common abbreviation ("Dr.") continues.
_BOUNDARY = re.compile(r"((?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9#])|\s*\n\s*)")
_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "jr.", "sr.", "fig.", "figs.", "eq.", "eqs.", "sec.",
                  "al.", "vs.", "cf.", "approx."}


def sentences(text: str) -> list[str]:
    """The sentences of a text by the rule above: a regex, not a parser (no quotes or lists handled)."""
    parts = _BOUNDARY.split(text.strip())
    out = [parts[0]] if parts[0] else []
    for sep, piece in zip(parts[1::2], parts[2::2]):
        if out and "\n" not in sep and out[-1].rsplit(None, 1)[-1].lower() in _ABBREVIATIONS:
            out[-1] += sep + piece
        elif piece:
            out.append(piece)
    return out


def lead(text: str, n: int = 1) -> str:
    """The first n sentences of a text, joined with a space: the lead-n baseline summary."""
    return " ".join(sentences(text)[:n])


@dataclass(frozen=True)
class SummarizationPreprocessing:
    """Text <-> ids as the run's data module made them: `prompt` gives a model's input, `decode` reads its summary."""

    tokenizer: Tokenizer
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    room: int  # source tokens a prompt keeps

    def prompt(self, texts: Sequence[str]) -> list[list[int]]:
        """Prompt ids exactly as in training: prefix, the stripped source cut to `room` tokens, suffix."""
        return [self.wrap(ids) for ids in self.tokenizer.encode_batch([t.strip() for t in texts])]

    def wrap(self, source_ids: Sequence[int]) -> list[int]:
        return [*self.prefix, *source_ids[: self.room], *self.suffix]

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """The stripped text of summary ids up to the first <eos> (which also ends GPT-2's padding); ids < 0 (the
        label IGNORE) and special tokens are skipped."""
        ids = [int(i) for i in ids if int(i) >= 0]
        if self.tokenizer.eos_id in ids:
            ids = ids[: ids.index(self.tokenizer.eos_id)]
        return self.tokenizer.decode(ids).strip()


class SummaryDataset(Dataset):
    """Encoded rows, served a whole batch at a time: {"input_ids", "attention_mask", "labels", "index"}, right-padded
    to the batch's longest prompt + summary, labels IGNORE on prompt and padding. An evaluation set (`name` given) adds
    the LEFT-padded prompts alone for batched generation, every raw reference, the raw source and the set's name."""

    def __init__(self, prompts: list[list[int]], summaries: list[list[int]], *, pad_id: int, name: str | None = None,
                 refs: list[list[str]] | None = None, sources: list[str] | None = None) -> None:
        self.prompts, self.summaries, self.pad_id = prompts, summaries, pad_id
        self.name, self.refs, self.sources = name, refs, sources

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        rows = [int(i) for i in indices]
        size = max(len(self.prompts[i]) + len(self.summaries[i]) for i in rows)
        input_ids = torch.full((len(rows), size), self.pad_id, dtype=torch.long)  # (B, T)
        labels = torch.full((len(rows), size), IGNORE, dtype=torch.long)  # (B, T), aligned with input_ids
        mask = torch.zeros(len(rows), size, dtype=torch.bool)  # (B, T) True = real token
        for b, i in enumerate(rows):
            p, s = len(self.prompts[i]), len(self.summaries[i])
            input_ids[b, : p + s] = torch.tensor(self.prompts[i] + self.summaries[i])
            labels[b, p : p + s] = torch.tensor(self.summaries[i])
            mask[b, : p + s] = True
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
                                 "index": torch.tensor(rows, dtype=torch.long)}
        if self.name is not None:
            width = max(len(self.prompts[i]) for i in rows)
            prompt_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # (B, P) left-padded
            prompt_mask = torch.zeros(len(rows), width, dtype=torch.bool)  # (B, P)
            for b, i in enumerate(rows):
                p = len(self.prompts[i])
                prompt_ids[b, width - p :] = torch.tensor(self.prompts[i])
                prompt_mask[b, width - p :] = True
            batch.update(prompt_ids=prompt_ids, prompt_mask=prompt_mask, refs=[list(self.refs[i]) for i in rows],
                         sources=[self.sources[i] for i in rows], set=self.name)
        return batch

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v if k == "set" else v[0] for k, v in self.__getitems__([i]).items()}


def _texts(value: Any) -> list[str]:
    """The non-empty stripped strings of a field value (a string, a list of strings, or missing)."""
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return [s.strip() for s in items if isinstance(s, str) and s.strip()]


def read_split(path: Path, source: str, targets: list[str]) -> tuple[list[str], list[list[str]]]:
    """(sources, references) of a .jsonl[.gz] file; a list-valued source is joined with " "; blank lines skipped."""
    srcs, refs = [], []
    line_no = 0
    try:
        with open_text(path) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                value = row[source]
                srcs.append((" ".join(value) if isinstance(value, list) else value).strip())
                refs.append([t for field in targets for t in _texts(row.get(field))])
                if not refs[-1]:
                    raise DataError(f"{path}, line {line_no}: no reference in the fields {targets}; every row needs a "
                                    "non-empty summary (check data.splits.<split>.targets)")
    except FileNotFoundError:
        raise DataError(f"missing file {path}; copy it there, set data.data_dir (paths.data_dir / ATTNLAB_DATA_DIR) "
                        "or set data.hub to download it") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path} ({type(err).__name__}: {err}); replace it with a good copy") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {line_no}: not a JSON object ({err.msg})") from None
    except (KeyError, TypeError, AttributeError):
        raise DataError(f"{path}, line {line_no}: no text in the source field {source!r} (check "
                        "data.splits.<split>.source)") from None
    return srcs, refs


def download_split(hub: dict[str, Any], hub_split: str, path: Path, source: str, target: str) -> None:
    """Write one hub split as JSON Lines in the layout its split reads: {source: text, target: [references]}."""
    import datasets  # optional: only needed when the files are missing

    log.info("%s missing; downloading %r (%s) from the hub", path, hub["id"], hub_split)
    rows = datasets.load_dataset(hub["id"], hub.get("config"), split=hub_split, cache_dir=str(path.parent / "hf_cache"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("tmp-" + path.name)  # same suffix: gzip'd alike
    with open_text(tmp, "wt") as f:
        for r in rows:
            f.write(json.dumps({source: r[hub["source"]], target: [r[t] for t in hub["targets"]]}) + "\n")
    tmp.replace(path)
    log.info("wrote %d rows to %s", len(rows), path)


def check_splits(splits: dict[str, Any], limit: dict[str, Any], hub: dict[str, Any] | None) -> None:
    """The shape of data.splits, data.limit and data.hub, with the fix in each error."""
    for name, spec in splits.items():
        if name not in ("train", "val") and not (name.startswith("test_") and len(name) > 5):
            raise ConfigError(f"data.splits.{name}: a split is train, val or test_<name> (e.g. test_scitldr)")
        if not isinstance(spec, dict) or sorted(spec) != sorted(SPLIT_KEYS) or not isinstance(spec["targets"], list) \
                or not spec["targets"]:
            raise ConfigError(f"data.splits.{name} must be {{file: <path under data_dir>, source: <field>, targets: "
                              f"[<field>, ...]}}; got {spec!r}")
    bad = [k for k, n in limit.items() if k not in splits or not isinstance(n, int) or n < 1]
    if bad:
        raise ConfigError(f"data.limit.{bad[0]}: limit maps a split of data.splits ({', '.join(splits)}) to a count >= 1")
    if hub is not None and not ({"id", "source", "targets", "splits"} <= set(hub) and set(hub["splits"]) <= set(splits)):
        raise ConfigError("data.hub must be {id, config, source, targets, splits: {split: hub split}} naming splits of "
                          f"data.splits; got {hub!r}")


class SummarizationDataModule(L.LightningDataModule):
    """Prompt + summary sequences for a causal LM: train batches shuffled with `seed`; one val loader and one test
    loader per test set (`splits` order), in file order, with left-padded prompts and raw references for ROUGE."""

    def __init__(
        self,
        *,
        tokenizer: TokenizerRecipe,
        seed: int,
        data_dir: str,
        splits: dict[str, dict[str, Any]],
        hub: dict[str, Any] | None = None,
        template: str = "{source}\nTL;DR:",
        max_len: int = 512,
        max_summary_len: int = 64,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        truncate: bool = True,
        limit: dict[str, int] | None = None,
        reserved_tokens: int = 0,
    ) -> None:
        super().__init__()
        if reserved_tokens < 0:
            raise ConfigError(f"data.reserved_tokens must be >= 0, got {reserved_tokens}")
        if template.count("{source}") != 1:
            raise ConfigError(f"data.template must hold {{source}} exactly once (where the text goes); got {template!r}")
        if max_summary_len < 2:
            raise ConfigError(f"data.max_summary_len must be >= 2 (a token and <eos>), got {max_summary_len}")
        if batch_size < 1 or num_workers < 0 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ConfigError("SummarizationDataModule: batch sizes must be >= 1, num_workers >= 0")
        check_splits(splits, limit or {}, hub)
        self.recipe, self.seed, self.data_dir = tokenizer, seed, Path(data_dir)
        self.splits, self.hub, self.template = dict(splits), hub, template
        self.max_len, self.max_summary_len, self.truncate = max_len, max_summary_len, truncate
        self.reserved_tokens = reserved_tokens  # positions the model puts before every prompt (peft's virtual tokens)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.limit = num_workers, dict(limit or {})
        self._tokenizer: Tokenizer | None = None
        self._pre: SummarizationPreprocessing | None = None
        self._test_names = [name.removeprefix("test_") for name in splits if name.startswith("test_")]
        self._texts: dict[str, tuple[list[str], list[list[str]]]] = {}
        self.datasets: dict[str, SummaryDataset] = {}

    # -- facts and artifacts ---------------------------------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        """What models and tasks need to know, stated once; builds the tokenizer (GPT-2's reads no data)."""
        tok = self.preprocessing().tokenizer
        return {"vocab_size": tok.vocab_size, "max_len": self.max_len, "eos_id": tok.eos_id, "pad_id": tok.pad_id,
                "tokenizer": tok, "max_summary_len": self.max_summary_len, "test_sets": list(self._test_names),
                "template": self.template}

    def save_artifacts(self, run_dir: Path) -> None:
        """Keep the tokenizer and the test set names in the run directory: validation, generation and serving reuse
        exactly these ids."""
        path = Path(run_dir) / ARTIFACT_DIR
        self.preprocessing().tokenizer.save(path)
        saved = {"test_sets": self._test_names, "template": self.template}
        (path / DATA_FILE).write_text(json.dumps(saved, indent=2) + "\n")

    def load_artifacts(self, run_dir: Path) -> bool:
        """Use the tokenizer a run saved, if any; True if so. Then facts() and preprocessing() read no data."""
        path = Path(run_dir) / ARTIFACT_DIR
        if not path.is_dir():
            return False
        self._tokenizer, self._pre = Tokenizer.load(path), None
        if (path / DATA_FILE).is_file():
            self._test_names = json.loads((path / DATA_FILE).read_text())["test_sets"]
        log.info("tokenizer from %s", path)
        return True

    def preprocessing(self) -> SummarizationPreprocessing:
        """What turns a document into prompt ids and generated ids into a summary; checks the template fits max_len."""
        if self._pre is None:
            tok = self._tokenizer = self._tokenizer or self._build_tokenizer()
            if tok.eos_id is None or tok.pad_id is None:
                raise ConfigError("summarization needs a tokenizer with <eos> and <pad>: tokenizer=gpt2, bpe or word")
            prefix, suffix = (tuple(tok.encode(part)) for part in self.template.split("{source}"))
            room = self.max_len - self.reserved_tokens - self.max_summary_len - len(prefix) - len(suffix)
            if room < 1:
                raise ConfigError(f"the template {self.template!r} ({len(prefix) + len(suffix)} tokens) with "
                                  f"max_summary_len={self.max_summary_len} and {self.reserved_tokens} reserved "
                                  f"positions leaves no room for the source in max_len={self.max_len}: raise "
                                  "data.max_len or lower data.max_summary_len")
            self._pre = SummarizationPreprocessing(tok, prefix, suffix, room)
        return self._pre

    def _build_tokenizer(self) -> Tokenizer:
        if not self.recipe.trains:
            return self.recipe.build()
        srcs, refs = self._split_texts("train")  # a tokenizer trained from scratch: on the training documents
        return self.recipe.build(srcs + [r[0] for r in refs])

    # -- raw text --------------------------------------------------------------------------------------------------
    def sources(self, split: str) -> list[str]:
        """The raw source texts of a split ("train", "val", "test_<name>"), in `index` order."""
        return list(self._split_texts(split)[0])

    def references(self, split: str) -> list[list[str]]:
        """Every reference of every row of a split, in `index` order: never truncated, for ROUGE."""
        return [list(r) for r in self._split_texts(split)[1]]

    def _path(self, split: str) -> Path:
        path = self.data_dir / self.splits[split]["file"]
        if path.is_file() or not self.hub or split not in self.hub["splits"]:
            return path
        spec = self.splits[split]
        try:
            download_split(self.hub, self.hub["splits"][split], path, spec["source"], spec["targets"][0])
        except Exception as e:  # offline, no `datasets`, network or hub errors all end the same way
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            raise DataError(f"no {path} and the hub download of {self.hub['id']!r} ({self.hub['splits'][split]}) "
                            f"failed ({reason}); copy the {split} file there or set data.data_dir") from e
        return path

    def _split_texts(self, split: str) -> tuple[list[str], list[list[str]]]:
        if split not in self._texts:
            if split not in self.splits:
                raise ConfigError(f"no split {split!r} in data.splits; choose one of: {', '.join(self.splits)}")
            spec, path = self.splits[split], self._path(split)
            srcs, refs = read_split(path, spec["source"], spec["targets"])
            if not srcs:
                raise DataError(f"{path} holds no rows; replace it with a good copy")
            n = self.limit.get(split, len(srcs))
            self._texts[split] = (srcs[:n], refs[:n])
        return self._texts[split]

    # -- encoding, datasets and loaders ----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download missing split files when data.hub is set (rank 0 only, before setup)."""
        for split in self.splits:
            self._path(split)

    def setup(self, stage: str | None = None) -> None:
        """Encode the splits the stage needs, once."""
        tests = [s for s in self.splits if s.startswith("test_")]
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": tests}.get(stage or "", list(self.splits))
        missing = [s for s in wanted if s not in self.splits]
        if missing:
            raise ConfigError(f"{stage} needs the {' and '.join(missing)} split(s): add them to data.splits")
        for split in wanted:
            if split not in self.datasets:
                self.datasets[split] = self._encode(split)

    def _encode(self, split: str) -> SummaryDataset:
        start = time.perf_counter()
        pre = self.preprocessing()
        tok = pre.tokenizer
        srcs, refs = self._split_texts(split)
        src_ids = tok.encode_batch(srcs)
        long = [i for i, ids in enumerate(src_ids) if len(ids) > pre.room]
        if long and not self.truncate:
            i = long[0]
            raise DataError(f"{split}, row {i}: the source has {len(src_ids[i])} tokens but max_len={self.max_len} "
                            f"leaves room for {pre.room} (max_summary_len={self.max_summary_len} and the template take the "
                            f"rest; {len(long)} rows too long); raise data.max_len or set data.truncate=true")
        summary_ids = tok.encode_batch([" " + r[0] for r in refs])
        cut = sum(len(ids) > self.max_summary_len - 1 for ids in summary_ids)
        summaries = [ids[: self.max_summary_len - 1] + [tok.eos_id] for ids in summary_ids]
        prompts = [pre.wrap(ids) for ids in src_ids]
        log.info("%s: %d rows (%.2f references each), %d sources cut to %d tokens (%.1f%%), %d summaries cut to %d; "
                 "mean prompt %.0f tokens; encoded in %.2f s", split, len(srcs), sum(map(len, refs)) / len(refs),
                 len(long), pre.room, 100 * len(long) / len(srcs), cut, self.max_summary_len - 1,
                 sum(map(len, prompts)) / len(prompts), time.perf_counter() - start)
        evaluated = {} if split == "train" else {"name": split.removeprefix("test_"), "refs": refs, "sources": srcs}
        return SummaryDataset(prompts, summaries, pad_id=tok.pad_id, **evaluated)

    def _loader(self, split: str, *, batch_size: int, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"SummarizationDataModule: call setup() before asking for the {split} loader")
        return make_loader(self.datasets[split], batch_size=batch_size, shuffle=shuffle, seed=self.seed,
                           num_workers=self.num_workers, trainer=self.trainer)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", batch_size=self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        tests = [s for s in self.splits if s.startswith("test_")]
        return [self._loader(s, batch_size=self.eval_batch_size, shuffle=False) for s in tests]


def write_fake_summaries(root: Path, *, seed: int = 0) -> None:
    """SciTLDR-A- and DialogSum-shaped .jsonl.gz files (train 48 / dev 12 / test 12 papers, 8 dialogues) under root,
    and an IMDB-shaped train file for pretrain_gpt2's corpus. A TL;DR is the abstract's second sentence."""
    import random

    rng = random.Random(seed)
    words = "model data learning network method results training task we show propose new deep graph".split()

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(4, 9))).capitalize() + "."

    def write(path: Path, rows: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    for split, n, refs in (("train", 48, 1), ("dev", 12, 2), ("test", 12, 3)):
        rows = []
        for _ in range(n):
            source = [sentence() for _ in range(rng.randint(3, 6))]
            rows.append({"source": source, "target": [source[1]] + [sentence() for _ in range(refs - 1)]})
        write(root / "scitldr_a" / f"{split}.jsonl.gz", rows)
    write(root / "dialogsum" / "dialogsum.test.jsonl.gz",
          [{"dialogue": f"#Person1#: {sentence()}\n#Person2#: {sentence()}", "summary1": sentence(),
            "summary2": sentence(), "summary3": sentence()} for _ in range(8)])
    write(root / "imdb" / "train.jsonl.gz", [{"text": " ".join(sentence() for _ in range(5)), "label": i % 2}
                                              for i in range(60)])
