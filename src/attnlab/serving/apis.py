"""The LitServe APIs behind `app/serve.py`: one class per family, each loading its run with `runs.load_model` in the
inference worker (`setup`), warming it up, then answering batches of requests.

LitServe gathers up to `max_batch_size` requests within `batch_timeout` seconds (dynamic batching) and calls
`predict` with them; a request may itself hold several inputs (`"inputs": [...]`). Classifiers run every input of
the batch in one forward pass; generation runs the requests that share settings (beam size, sampling) together.
Inputs were validated in the HTTP process (attnlab.serving.schemas), so nothing here fails on a bad request.

No `from __future__ import annotations` here: LitServe hands `decode_request`'s parameter annotation to FastAPI as
the request body's model, and a string annotation would not resolve there.
"""

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import litserve as ls

from attnlab.serving import schemas
from attnlab.serving.routing import ResponseCache, Router, answer
from attnlab.serving.schemas import (GenerateRequest, ImageRequest, StreamRequest, SummarizeRequest, TextRequest,
                                     TranslateRequest)

log = logging.getLogger("attnlab")


@dataclass
class Job:
    """One request, decoded: its inputs, its settings, and whether it sent `input` (one) or `inputs` (a list)."""

    items: list[Any]
    options: dict[str, Any] = field(default_factory=dict)
    single: bool = True
    version: str = ""  # which model version answers it (attnlab.serving.routing.Router)


@dataclass
class Settings:
    """What every inference worker needs to rebuild the run: plain values, pickled into the worker process."""

    run_dir: str
    ckpt: str = "best"
    backend: str = "torch"  # torch | onnx | onnx_int8
    threads: int = 1
    sub_batch: int = 8  # text classifiers: inputs per length-sorted model call
    limits: schemas.Limits = field(default_factory=schemas.Limits)
    version: str = ""  # how answers and metrics name the model: <name>/<version> or the run's folder name
    canary_dir: str | None = None  # a second model of the same task (a run directory) ...
    canary_version: str = ""
    canary_share: float = 0.0  # ... answering this share of the requests
    canary_seed: int = 0
    cache_size: int = 0  # response cache entries (0: no cache)


class RunAPI(ls.LitAPI):
    """The shared part: load and warm up in `setup`, decode to a Job, predict a list of Jobs, encode per request."""

    request_type: type = TextRequest

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings

    def setup(self, device: str) -> None:
        import torch

        from attnlab import runs

        schemas.LIMITS = self.settings.limits  # this worker process validates and converts as the HTTP one did
        if not log.handlers and not logging.getLogger().handlers:  # a spawned process: nothing configured logging
            logging.basicConfig(level=logging.INFO, format="[%(asctime)s][worker %(process)d][%(levelname)s] - %(message)s")
        torch.set_num_threads(self.settings.threads)
        start = time.perf_counter()
        s = self.settings
        self.loaded = runs.load_model(s.run_dir, s.ckpt)
        self.model = self.loaded.model
        if s.backend in ("onnx", "onnx_int8"):
            from attnlab.serving.onnx_model import OnnxModel

            self.model = OnnxModel(s.run_dir, int8=s.backend == "onnx_int8", threads=s.threads)
        self.variants = {s.version: (self.loaded, self.model)}
        if s.canary_dir:  # torch only (the server refuses a canary with another backend)
            canary = runs.load_model(s.canary_dir, "best")
            self.variants[s.canary_version] = (canary, canary.model)
        self.router = Router(main=s.version, canary=s.canary_version if s.canary_dir else None, share=s.canary_share,
                             seed=s.canary_seed)
        self.cache = ResponseCache(size=s.cache_size) if s.cache_size > 0 else None
        for version in self.variants:
            self.use(version)
            self.warm_up()
        self.use(s.version)
        log.info("worker ready: %s (%s, %s backend) in %.1f s", ", ".join(f"{v} ({loaded.run_dir})" for v, (loaded, _)
                 in self.variants.items()), self.loaded.checkpoint.name, s.backend, time.perf_counter() - start)

    def use(self, version: str) -> None:
        """Answer with this version's model (one worker answers one batch at a time)."""
        self.loaded, self.model = self.variants[version]

    def warm_up(self) -> None:
        """One request's worth of work before /health says ready, so the first caller does not pay for it."""
        self.run_jobs([self.decode_request(self.request_type(input=self.example()))])

    def example(self) -> Any:
        return "A warm-up input."

    def decode_request(self, request: Any) -> Job:  # the annotation FastAPI validates is set per subclass below
        return Job(items=request.items(), options=request.options(), single=request.input is not None)

    def predict(self, x: Job | list[Job]) -> Any:
        from attnlab.serving import metrics

        jobs = x if isinstance(x, list) else [x]  # a list when batching (max_batch_size > 1)
        metrics.BATCH_REQUESTS.observe(len(jobs))
        metrics.BATCH_SIZE.observe(sum(len(job.items) for job in jobs))
        for job in jobs:
            job.version = self.router.choose()
        outputs: list[Any] = [None] * len(jobs)
        for version in dict.fromkeys(job.version for job in jobs):  # each version's requests in one call
            members = [i for i, job in enumerate(jobs) if job.version == version]
            start = time.perf_counter()
            self.use(version)
            answers = answer([jobs[i] for i in members], self.run_jobs, version=version, cache=self.cache)
            elapsed = time.perf_counter() - start
            for i, (single, items) in zip(members, answers):
                outputs[i] = (single, items, version)
                metrics.MODEL_REQUESTS.labels(version=version).inc()
                metrics.MODEL_SECONDS.labels(version=version).observe(elapsed)
                for item in items:
                    if isinstance(item, dict) and "label" in item:
                        metrics.PREDICTIONS.labels(version=version, label=str(item["label"])).inc()
        return outputs if isinstance(x, list) else outputs[0]

    def run_jobs(self, jobs: list[Job]) -> list[list[Any]]:
        """Each job's outputs, one per item."""
        raise NotImplementedError

    def encode_response(self, output: tuple[bool, list[Any], str]) -> dict[str, Any]:
        single, items, version = output
        return {"output": items[0], "version": version} if single else {"outputs": items, "version": version}

    def _wrap(self, jobs: list[Job], outputs: list[list[Any]]) -> list[tuple[bool, list[Any]]]:
        return [(job.single, out) for job, out in zip(jobs, outputs)]


def _split(flat: list[Any], jobs: list[Job]) -> list[list[Any]]:
    out, start = [], 0
    for job in jobs:
        out.append(flat[start : start + len(job.items)])
        start += len(job.items)
    return out


def _by_options(jobs: list[Job]) -> dict[tuple, list[int]]:
    """Job indices grouped by identical settings: each group decodes as one batch."""
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(tuple(sorted(job.options.items())), []).append(i)
    return groups


class _ClassifierAPI(RunAPI):
    """Every input of every request in one forward pass; softmax probabilities by class name."""

    def class_names(self) -> list[str]:
        names = self.loaded.facts.get("class_names")
        return list(names) if names else [str(i) for i in range(self.loaded.facts["num_classes"])]

    def logits(self, items: list[Any]) -> Any:
        raise NotImplementedError

    def run_jobs(self, jobs: list[Job]) -> list[Any]:
        import torch

        items = [item for job in jobs for item in job.items]
        with torch.inference_mode():
            probs = self.logits(items).float().softmax(dim=-1)  # (N, C)
        names = self.class_names()
        flat = [{"label": names[int(p.argmax())], "index": int(p.argmax()),
                 "probabilities": {n: round(float(v), 6) for n, v in zip(names, p)}} for p in probs]
        return self._wrap(jobs, _split(flat, jobs))


class TextClassifierAPI(_ClassifierAPI):
    request_type = TextRequest

    def decode_request(self, request: TextRequest) -> Job:
        return super().decode_request(request)

    def logits(self, items: list[str]) -> Any:
        """Length-sorted chunks of `sub_batch` reviews: a batch pads to its longest review, so one batch of 32 IMDB
        reviews (mean 277 tokens, longest 800) costs a BiLSTM 38.4 ms a review against 44.7 alone; sorted chunks of 8,
        26.5 ms (scripts/bench_text_batching.py, AMD EPYC, 2 threads). Padding changes no output (the models mask it)."""
        import torch

        batch = self.loaded.preprocess(items)  # tokenised once; each chunk takes its rows, cut to its longest
        lengths = batch["attention_mask"].sum(dim=1)  # (N,)
        order = lengths.argsort(stable=True).tolist()
        out: list[Any] = [None] * len(items)
        for start in range(0, len(order), self.settings.sub_batch):
            chunk = order[start : start + self.settings.sub_batch]
            width = int(lengths[chunk].max())
            for i, row in zip(chunk, self.model(**{k: v[chunk, :width] for k, v in batch.items()})):
                out[i] = row
        return torch.stack(out)


class ImageClassifierAPI(_ClassifierAPI):
    request_type = ImageRequest

    def example(self) -> Any:
        size = self.settings.limits.image_size
        return [[0] * size for _ in range(size)] if self.settings.limits.channels == 1 else \
            [[[0] * size for _ in range(size)] for _ in range(self.settings.limits.channels)]

    def decode_request(self, request: ImageRequest) -> Job:
        job = super().decode_request(request)
        job.items = [schemas.check_image(item) for item in job.items]  # uint8 (C, H, W)
        return job

    def logits(self, items: list[Any]) -> Any:
        import numpy as np
        import torch

        return self.model(self.loaded.preprocess(torch.from_numpy(np.stack(items))))


class LanguageModelAPI(RunAPI):
    """Continuations, one prompt at a time (prompts differ in length and seed): the text after the prompt."""

    request_type = GenerateRequest

    def decode_request(self, request: GenerateRequest) -> Job:
        return super().decode_request(request)

    def continuation(self, prompt: str, options: dict[str, Any], streamer: Any = None) -> str:
        from attnlab.tasks.language_modeling import checked_samples

        sampling = {k: v for k, v in options.items() if k != "max_new_tokens"}
        text = checked_samples(self.model, self.loaded.tokenizer, [prompt], options["max_new_tokens"],
                               **sampling, **({"streamer": streamer} if streamer else {}))[0]
        return text[len(prompt):]

    def run_jobs(self, jobs: list[Job]) -> list[Any]:
        return self._wrap(jobs, [[{"continuation": self.continuation(p, job.options)} for p in job.items] for job in jobs])


class StreamAPI(LanguageModelAPI):
    """`POST /stream`: server-sent events, one `data: {"token": "<text>"}` per generated token as it is drawn, then
    `data: {"done": true, "continuation": "<all of it>"}`. The same seed gives the same text as /predict."""

    request_type = StreamRequest

    def decode_request(self, request: StreamRequest) -> Job:
        return super().decode_request(request)

    def warm_up(self) -> None:
        self.continuation(self.example(), StreamRequest(input=self.example(), max_new_tokens=2).options())

    def predict(self, x: Job) -> Iterator[str]:
        from attnlab.serving import metrics

        x.version = self.router.choose()
        self.use(x.version)
        metrics.MODEL_REQUESTS.labels(version=x.version).inc()
        tokens: queue.Queue = queue.Queue()
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["text"] = self.continuation(x.items[0], x.options, streamer=lambda t: tokens.put(int(t[0, 0])))
            except Exception as err:  # reported on the stream, not lost in a thread
                result["error"] = err
            finally:
                tokens.put(None)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        ids: list[int] = []
        sent = ""
        eos = self.loaded.tokenizer.eos_id
        while (token := tokens.get()) is not None:
            if token == eos:
                continue
            ids.append(token)
            text = self.loaded.tokenizer.decode(ids)
            if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                continue
            yield {"token": text[len(sent):]}
            sent = text
        thread.join()
        text = self.loaded.tokenizer.decode(ids)
        if text != sent and text.startswith(sent):  # a character still open at the end
            yield {"token": text[len(sent):]}
        if "error" in result:
            yield {"error": str(result["error"])}
        else:
            yield {"done": True, "continuation": result["text"], "version": x.version}

    def encode_response(self, output: Iterator[dict[str, Any]]):  # no return annotation: FastAPI would model it
        import json

        for event in output:
            yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


class TranslationAPI(RunAPI):
    request_type = TranslateRequest

    def decode_request(self, request: TranslateRequest) -> Job:
        return super().decode_request(request)

    def run_jobs(self, jobs: list[Job]) -> list[Any]:
        from attnlab.translate import translate_texts

        outputs: list[list[Any]] = [[] for _ in jobs]
        for key, members in _by_options(jobs).items():
            texts = [t for i in members for t in jobs[i].items]
            best = translate_texts(self.loaded, texts, beam_size=jobs[members[0]].options["beam_size"])
            flat = [{"translation": hyps[0][0]} for hyps in best]
            for i, out in zip(members, _split(flat, [jobs[i] for i in members])):
                outputs[i] = out
        return self._wrap(jobs, outputs)


class SummarizationAPI(RunAPI):
    request_type = SummarizeRequest

    def decode_request(self, request: SummarizeRequest) -> Job:
        return super().decode_request(request)

    def run_jobs(self, jobs: list[Job]) -> list[Any]:
        from attnlab.tasks.summarization import summarize_texts

        facts = self.loaded.facts
        outputs: list[list[Any]] = [[] for _ in jobs]
        for key, members in _by_options(jobs).items():
            options = jobs[members[0]].options
            texts = [t for i in members for t in jobs[i].items]
            summaries = summarize_texts(self.model, self.loaded.preprocess, texts, eos_id=facts["eos_id"],
                                        pad_id=facts["pad_id"], num_beams=options["num_beams"],
                                        max_new_tokens=min(options["max_new_tokens"], facts["max_summary_len"]))
            for i, out in zip(members, _split([{"summary": s} for s in summaries], [jobs[i] for i in members])):
                outputs[i] = out
        return self._wrap(jobs, outputs)


FAMILIES: dict[str, type[RunAPI]] = {
    "text_classification": TextClassifierAPI,
    "image_classification": ImageClassifierAPI,
    "language_model": LanguageModelAPI,
    "translation": TranslationAPI,
    "summarization": SummarizationAPI,
}


def family_of(loaded: Any) -> str:
    """Which API serves a loaded run, from what its data gives (preprocessing) and its model can do."""
    from attnlab.data.images import ImageNormalization, StandardizedImages
    from attnlab.data.imdb import ReviewPreprocessing

    from attnlab.tasks import CLASSIFIER_TASKS, task_name

    pre, model = loaded.preprocess, loaded.model
    task = task_name(loaded.cfg)
    if hasattr(pre, "decode_target"):
        return "translation"
    if hasattr(pre, "prompt"):
        return "summarization"
    if task in CLASSIFIER_TASKS and isinstance(pre, (ImageNormalization, StandardizedImages)):  # MNIST, folders
        return "image_classification"
    if task in CLASSIFIER_TASKS and isinstance(pre, ReviewPreprocessing):
        return "text_classification"
    if task == "LanguageModelingTask" and hasattr(model, "generate"):
        return "language_model"
    from attnlab.errors import ConfigError

    raise ConfigError(f"{Path(loaded.run_dir)} is a {task} run of a {type(model).__name__}, which this server does not "
                      f"serve; it serves: {', '.join(FAMILIES)}")
