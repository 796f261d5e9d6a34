"""The recovery fine-tune's learning rate (engine.recovery_lr): by default the start's own training rate
where its record says it (learning-rate rewinding), a tenth of the training rate where not; an explicit
``finetune_lr`` wins; the record says which rate and why."""
from __future__ import annotations

import pytest

from conftest import SMALL_DATA, SMALL_MEASURE, adopt_run, run_here
from engine import recovery_lr
from engine.spec import TrainSpec
from engine.store import Store

BATCH = SMALL_DATA["batch_size"]
TRAINED_LR = 0.1 * BATCH / 256        # the small base's rate: SGD's linear scaling rule at its batch


def phases(*pairs: tuple[str, float]) -> dict:
    return {"recipe": {"phases": [{"phase": p, "epochs": 1, "lr": lr} for p, lr in pairs]}}


@pytest.mark.fast
def test_the_policy_rewinds_to_the_recorded_training_rate_and_falls_back_to_a_tenth():
    train = TrainSpec()
    assert recovery_lr.DEFAULT_POLICY in recovery_lr.POLICIES
    rewound = recovery_lr.resolve(None, phases(("train", 0.05)), train, 64, "cnn", recovery_lr.REWIND)
    assert (rewound.lr, rewound.source) == (0.05, "rewind")
    # a compressed start's own phases are fine-tunes: the rate it carried along wins over them
    chained = {**phases(("finetune", 0.003)), "training_lr": 0.05}
    assert recovery_lr.resolve(None, chained, train, 64, "cnn", recovery_lr.REWIND).lr == 0.05
    assert recovery_lr.recorded_training_lr(phases(("finetune", 0.003))) is None
    for start in (None, {"accuracy": 0.9}):   # an imported model, a bundle's metrics: no rate recorded
        fallback = recovery_lr.resolve(None, start, train, 64, "cnn", recovery_lr.REWIND)
        assert fallback.source == "tenth" and fallback.lr == pytest.approx(0.1 * 64 / 256 / 10)
        assert "names no training rate" in fallback.why
    tenth = recovery_lr.resolve(None, phases(("train", 0.05)), train, 64, "cnn", recovery_lr.TENTH)
    assert (tenth.lr, tenth.source) == (pytest.approx(0.0025), "tenth")
    explicit = recovery_lr.resolve(0.2, phases(("train", 0.05)), train, 64, "cnn", recovery_lr.REWIND)
    assert (explicit.lr, explicit.source) == (0.2, "finetune_lr")


@pytest.mark.fast
@pytest.mark.parametrize("method", ["prune_structured", "prune_blocks", "slimming", "soft_filter_pruning",
                                    "prune_unstructured", "lowrank_svd", "factorize"])
def test_every_method_that_fine_tunes_after_a_cut_takes_finetune_lr_defaulting_to_the_policy(method):
    from engine.errors import SpecError
    from engine.methods import get
    from engine.methods.recovery import RECOVERY_LR_DEFAULT
    from engine.validation import check_spec
    p = next(p for p in get(method).params if p.name == "finetune_lr")
    assert p.default is None and p.optional and RECOVERY_LR_DEFAULT in p.help
    with pytest.raises(SpecError, match="method.params.finetune_lr: must be in"):
        check_spec({"data": {"name": "digits"}, "model": {"arch": "resnet18"},
                    "method": {"name": method, "params": {"finetune_lr": 0}}})


@pytest.fixture(scope="module")
def start(tmp_path_factory, small_base):
    store = Store(tmp_path_factory.mktemp("recovery-lr-ws"))
    return store, adopt_run(*small_base, store)


def unstructured(model: dict, **params) -> dict:
    return {"data": SMALL_DATA, "model": model, "train": {"epochs": 1}, "measure": SMALL_MEASURE,
            "method": {"name": "prune_unstructured", "params": {"amount": 0.5, "finetune_epochs": 1, **params}}}


def test_unstructured_fine_tunes_at_the_default_rate_or_its_finetune_lr_and_the_record_says_which(start):
    store, base = start
    assert recovery_lr.recorded_training_lr(base) == pytest.approx(TRAINED_LR)
    rec = run_here(unstructured({"from_run": base["run_id"]}), store.root)
    trained_at = rec["recipe"]["phases"][-1]["lr"]
    assert rec["training_lr"] == pytest.approx(TRAINED_LR)    # carried along from the start
    if recovery_lr.DEFAULT_POLICY == recovery_lr.REWIND:
        assert (rec["recovery_lr_source"], rec["recovery_lr"]) == ("rewind", pytest.approx(TRAINED_LR))
    else:
        assert (rec["recovery_lr_source"], rec["recovery_lr"]) == ("tenth", pytest.approx(TRAINED_LR / 10))
    assert trained_at == pytest.approx(rec["recovery_lr"])
    assert any(n.startswith(f"recovery fine-tune at lr {rec['recovery_lr']:g}") for n in rec["notes"])

    rec = run_here(unstructured({"from_run": base["run_id"]}, finetune_lr=0.003, schedule="gradual"), store.root)
    assert (rec["recovery_lr_source"], rec["recovery_lr"]) == ("finetune_lr", 0.003)
    assert rec["recipe"]["phases"][-1] == {**rec["recipe"]["phases"][-1], "phase": "gradual pruning", "lr": 0.003}


def test_a_start_without_a_recorded_training_rate_fine_tunes_at_a_tenth(start):
    store, base = start
    # a bundle file, not a run of this workspace: its metrics say nothing of how it was trained
    rec = run_here(unstructured({"checkpoint": base["checkpoint"]}), store.root)
    assert rec["training_lr"] is None
    assert (rec["recovery_lr_source"], rec["recovery_lr"]) == ("tenth", pytest.approx(TRAINED_LR / 10))
    assert rec["recipe"]["phases"][-1]["lr"] == pytest.approx(TRAINED_LR / 10)
    assert any("names no training rate" in n for n in rec["notes"])
