"""Every config option composes, and every key in it is a checked argument of its `_target_`."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from attnlab import build
from attnlab.config import conf_dir
from attnlab.errors import ConfigError

CONF = conf_dir()
MNIST_FACTS = {"in_channels": 1, "image_size": 28, "num_classes": 10, "class_names": [str(i) for i in range(10)]}
IMDB_FACTS = {"vocab_size": 30000, "pad_id": 0, "max_len": 256, "num_classes": 2, "class_names": ["negative", "positive"]}
LM_FACTS = {"vocab_size": 4096, "max_len": 256, "eos_id": 5, "token_bytes": None, "tokenizer": None}
FACTS = {"attnlab.data.mnist.MNISTDataModule": MNIST_FACTS, "attnlab.data.imdb.IMDBDataModule": IMDB_FACTS,
         "attnlab.data.corpus.TextCorpusDataModule": LM_FACTS,
         "attnlab.data.text_classification.TextClassificationDataModule": {**IMDB_FACTS, "num_classes": 3,
                                                                           "class_names": ["a", "b", "c"]},
         "attnlab.data.image_folder.ImageFolderDataModule": {**MNIST_FACTS, "in_channels": 3, "image_size": 32}}
LM = ["data=tinystories_sample", "task=language_modeling"]
# Options that only make sense with another data set than the default (MNIST).
NEEDS = {
    **{("model", m): ["data=imdb"] for m in ("rnn", "lstm", "gru", "encoder", "bert", "roberta", "distilbert", "hf_classifier")},
    ("model", "autoencoder"): ["task=reconstruction", "data.target=image"],
    ("data", "imdb"): ["model=lstm"],
    ("data", "tabular"): ["data.files=[t.csv]", "data.target=y", "data.kind=regression", "task=regression", "model=mlp"],
    ("data", "wine_quality"): ["model=mlp"],
    **{("data", d): ["model=mlp", "task=regression"] for d in ("california_housing", "boston_housing")},
    **{("model", m): ["data=wine_quality"] for m in ("ft_transformer", "random_forest", "gbt", "bagging", "stacking",
                                                    "voting", "sk_linear")},
    ("task", "regression"): ["data=california_housing", "model=mlp"],
    ("data", "text_classification"): ["model=lstm", "data.train_file=train.csv"],
    ("data", "image_folder"): ["data.root=/images"],
    **{("model", m): LM for m in ("gpt", "lstm_lm", "hf_causal_lm")},
    ("model", "ngram"): ["data=tinystories_sample", "task=count_lm"],
    **{("data", d): ["model=gpt", "task=language_modeling"] for d in ("tinystories", "tinystories_sample")},
    ("data", "text_corpus"): ["model=gpt", "task=language_modeling", "data.train_file=stories.txt"],
    **{("model", m): ["data=multi30k", "task=seq2seq"] for m in ("transformer_seq2seq", "lstm_attention")},
    **{("data", d): ["model=transformer_seq2seq", "task=seq2seq"] for d in ("multi30k", "tatoeba")},
    ("data", "parallel"): ["model=transformer_seq2seq", "task=seq2seq", "data.source.train=[a.en,a.fr]",
                           "data.source.val=[b.en,b.fr]"],
    ("task", "seq2seq"): ["data=multi30k", "model=transformer_seq2seq"],
    ("data", "scitldr"): ["model=hf_causal_lm", "task=summarization"],
    ("task", "summarization"): ["data=scitldr", "model=hf_causal_lm"],
    **{("peft", p): ["data=scitldr", "model=hf_causal_lm", "task=summarization"]
       for p in ("none", "lora", "prompt_tuning", "prefix_tuning", "ia3")},
    ("task", "masked_lm"): ["data=mlm_corpus", "data.train_file=t.txt", "model=bert", "+model.head=tokens"],
    ("data", "mlm_corpus"): ["data.train_file=t.txt", "model=bert", "+model.head=tokens", "task=masked_lm"],
    ("task", "distillation"): ["data=imdb", "model=distilbert", "task.teacher=/runs/an_imdb_run"],
}
SEQ2SEQ_FACTS = {"src_vocab_size": 8000, "tgt_vocab_size": 8000, "src_pad_id": 0, "tgt_pad_id": 0, "sos_id": 2,
                 "eos_id": 3, "max_src_len": 64, "max_tgt_len": 64, "shared_vocab": True, "test_sets": ["test"],
                 "tgt_tokenizer": None}
FACTS["attnlab.data.translation.TranslationDataModule"] = SEQ2SEQ_FACTS
FACTS["attnlab.data.masked_corpus.MaskedCorpusDataModule"] = {
    "vocab_size": 30000, "max_len": 512, "pad_id": 0, "mask_id": 6, "special_ids": list(range(7)), "word_start": None,
    "tokenizer": None}
FACTS["attnlab.data.tabular.TabularDataModule"] = {
    "in_features": 12, "target_kind": "classification", "num_numeric": 12, "cat_cardinalities": [], "num_classes": 6,
    "class_names": list("345678"), "class_counts": [1] * 6, "num_outputs": 1, "target_mean": 0.0, "target_std": 1.0,
    "log_target": False}
FACTS["attnlab.data.summarization.SummarizationDataModule"] = {
    "vocab_size": 50257, "max_len": 512, "eos_id": 50256, "pad_id": 50256, "tokenizer": None, "max_summary_len": 64,
    "test_sets": ["scitldr", "dialogsum"], "template": "{source}\nTL;DR:"}
# Experiments with a required setting (??? in the file): a value that composes (no run is read here).
EXPERIMENT_NEEDS = {"mnist_cnn_denoised": ["data.denoise_with=/runs/an_mnist_ae_run"],
                    "imdb_bert_ft": ["init_from=/runs/an_mlm_run"], "imdb_roberta_ft": ["init_from=/runs/an_mlm_run"],
                    "imdb_distilbert_kd": ["task.teacher=/runs/an_imdb_run"]}
TRACKER_CONTEXT = {"save_dir": "x", "name": "x", "run_id": "x", "group": None, "tags": [], "previous_id": None}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/attnlab-compose", *overrides], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # the ${hydra:...} resolvers need it
        return cfg


def check_all(cfg) -> None:
    """What app/train.py instantiates, checked without training."""
    build.check(cfg.data, "data")  # nested objects too (data.tokenizer)
    facts = FACTS[cfg.data._target_]
    model_target = build.check(cfg.model, "model", facts=facts)
    assert model_target is not None
    if cfg.get("optimizer"):
        build.check(cfg.optimizer, "optimizer")
    if cfg.get("scheduler"):
        build.check(cfg.scheduler, "scheduler")
    build.check(cfg.task, "task", facts=facts, objects={"model": 0, "optimizer": 0, "scheduler": 0})
    build.check(cfg.trainer, "trainer", objects={"logger": 0, "callbacks": 0})
    if cfg.get("peft"):
        build.check(cfg.peft, "peft")
    for key, node in (cfg.get("tracker") or {}).items():
        build.check(node, f"tracker.{key}", objects=TRACKER_CONTEXT)
    for key, node in (cfg.get("callbacks") or {}).items():
        if node:
            build.check(node, f"callbacks.{key}")


GROUP_OPTIONS = [
    (group, option)
    for group in ("model", "data", "task", "optimizer", "scheduler", "trainer", "tracker", "callbacks", "debug", "peft")
    for option in options(group)
] + [("tokenizer@data.tokenizer", option) for option in options("tokenizer")]


@pytest.mark.parametrize("group, option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes_and_checks(group, option):
    extra = ["data=imdb", "model=bert"] if group.startswith("tokenizer") else NEEDS.get((group, option), [])
    cfg = composed([*extra, f"{group}={option}"])
    check_all(cfg)
    if group.startswith("tokenizer"):
        assert cfg.data.tokenizer._target_.startswith("attnlab.data.tokenizers.")


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_checks(experiment):
    cfg = composed([f"experiment={experiment}", *EXPERIMENT_NEEDS.get(experiment, [])])
    check_all(cfg)
    assert cfg.name == experiment


def test_a_required_experiment_setting_left_out_is_named():
    with pytest.raises(ConfigError, match=r"data.denoise_with must be given \(it is \?\?\? in the config\)"):
        check_all(composed(["experiment=mnist_cnn_denoised"]))


def test_an_unknown_peft_option_is_refused_with_the_choices():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="peft.*lora"):
        composed(["experiment=scitldr_full", "peft=loraa"])


def test_model_and_data_choices_compose_without_an_experiment():
    cfg = composed(["model=vit", "data=mnist"])
    assert cfg.model._target_.endswith("vit_tiny") and cfg.name == "mnist_vit"
    check_all(cfg)


def test_several_trackers_at_once():
    cfg = composed(["tracker=[csv,wandb,tensorboard,mlflow]"])
    assert set(cfg.tracker) == {"csv", "wandb", "tensorboard", "mlflow"}
    check_all(cfg)


def test_a_fact_typed_in_yaml_is_an_error():
    cfg = composed(["+model.num_classes=5"])
    with pytest.raises(ConfigError, match="model.num_classes comes from the data"):
        build.check(cfg.model, "model", facts=MNIST_FACTS)
    cfg = composed(["experiment=imdb_bert", "+model.vocab_size=100"])
    with pytest.raises(ConfigError, match="model.vocab_size comes from the data"):
        build.check(cfg.model, "model", facts=IMDB_FACTS)


def test_nested_tokenizer_keys_are_checked():
    cfg = composed(["data=imdb", "+data.tokenizer.max_vocbe=5"])
    with pytest.raises(ConfigError, match="data.tokenizer.max_vocbe is not an argument of attnlab.data.tokenizers.WordTokenizer"):
        check_all(cfg)
    cfg = composed(["experiment=imdb_roberta", "tokenizer@data.tokenizer=gpt2", "data.tokenizer.add_specials=maybe"])
    with pytest.raises(ConfigError, match="data.tokenizer.add_specials: expected bool"):
        check_all(cfg)


def test_config_only_commands_do_not_import_torch_or_lightning():
    code = (
        "import sys; sys.argv = ['train', '--cfg', 'job']\n"
        "import attnlab.cli as cli\n"
        "try:\n    cli.train()\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'lightning') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


def test_monitor_mode_comes_from_the_tasks_stated_directions():
    """A direction is stated once per task (monitor.modes): switching the monitored metric switches its mode."""
    assert composed([]).monitor.mode == "max"  # val/acc
    cfg = composed(["monitor.metric=val/loss"])
    assert cfg.monitor.mode == "min" and cfg.callbacks.early_stopping.mode == "min" and cfg.callbacks.model_checkpoint.mode == "min"
    assert composed(["experiment=tinystories_gpt", "monitor.metric=val/bpb"]).monitor.mode == "min"
    with pytest.raises(Exception, match="states no direction for it .* add monitor.mode=min or monitor.mode=max"):
        composed(["monitor.metric=val/foo"]).monitor.mode
    assert composed(["monitor.metric=val/foo", "monitor.mode=min"]).monitor.mode == "min"


@pytest.mark.parametrize("model", ["lstm_lm", "ngram"])
def test_max_len_is_no_argument_of_a_model_that_reads_any_length(model):
    """A recurrence or an n-gram has no position table: max_len is not taken (the data's fact passes it by)."""
    cfg = composed([*NEEDS[("model", model)], f"model={model}", "+model.max_len=64"])
    with pytest.raises(ConfigError, match="model.max_len is not an argument of"):
        build.check(cfg.model, "model", facts=LM_FACTS)
    built = build.instantiate(composed([*NEEDS[("model", model)], f"model={model}"]).model, "model", {**LM_FACTS, "vocab_size": 50})
    assert sum(p.numel() for p in built.parameters()) >= 0 and "max_len" not in build.accepted(type(built), LM_FACTS)


def test_a_count_based_task_composes_no_optimizer_and_refuses_one():
    cfg = composed(["experiment=tinystories_ngram"])
    assert cfg.get("optimizer") is None and not cfg.scheduler
    assert build.optimization(cfg) == {"optimizer": None, "scheduler": None}
    with pytest.raises(ConfigError, match="CountLMTask is fitted by counting and takes no optimizer or scheduler; drop "
                                          "them: ~optimizer scheduler=none"):
        build.optimization(composed(["experiment=tinystories_ngram", "optimizer=adamw", "scheduler=cosine"]))
    with pytest.raises(ConfigError, match="LanguageModelingTask trains by gradient descent: add an optimizer, e.g. optimizer=adamw"):
        build.optimization(composed(["task=language_modeling", "data=tinystories_sample", "model=gpt", "~optimizer"]))
    assert set(build.optimization(composed(["experiment=tinystories_gpt"]))) == {"optimizer", "scheduler"}
